"""Group commit for the gateway: many concurrent exchanges, one SQLite transaction.

Theory of operation
-------------------
Each exchange (an HTTP request, an MQTT message) that brings batches or gaps hands them
to ``Committer.submit`` and awaits the marks. One writer task takes everything submitted
since its last commit, applies it with one ``GatewayStore.commit`` in a worker thread (so
the event loop keeps serving), and resolves every waiter with its marks. Under load the
groups grow by themselves: while one commit (and its fsync) runs, the next group gathers.
Nothing is acknowledged before its commit has returned.

If a commit fails (disk full, database locked), every waiter of that group gets the
exception, nothing of the group is stored, and the marks are unchanged: the edges retry.
"""
import asyncio


class Committer:
    def __init__(self, store, now_ms, max_group_items=512):
        self.store = store
        self.now_ms = now_ms
        self.max_group_items = max_group_items
        self._pending = []  # (items, future)
        self._wake = None
        self._task = None
        self.commits = 0
        self.items = 0

    async def start(self):
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _items, fut in self._pending:
            if not fut.done():
                fut.set_exception(ConnectionAbortedError("gateway shutting down"))
        self._pending = []

    async def submit(self, items):
        """Store items (Batch / Gap) durably; return their marks, in order."""
        if not items:
            return []
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((items, fut))
        self._wake.set()
        return await fut

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group = []
                n = 0
                while self._pending and (not group or n + len(self._pending[0][0]) <= self.max_group_items):
                    items, fut = self._pending.pop(0)
                    group.append((items, fut))
                    n += len(items)
                flat = [it for items, _ in group for it in items]
                try:
                    marks = await loop.run_in_executor(None, self.store.commit, flat, self.now_ms())
                except Exception as e:  # noqa: BLE001 - every waiter learns of the failure
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                self.commits += 1
                self.items += len(flat)
                i = 0
                for items, fut in group:
                    if not fut.done():
                        fut.set_result(marks[i:i + len(items)])
                    i += len(items)
