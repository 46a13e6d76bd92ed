// Runs Python code under MicroPython's WebAssembly port (32-bit: sys.maxsize == 2**31-1).
//
//   node run.mjs [--modules DIR] [--heap 1m] [--fixed-heap] [--copy HOST_DIR:MP_DIR]... -c CODE [--loop CODE2]
//
// The one runner of the 32-bit lane, shipped in edgeline_host/firmware/mp32/ (wasmport.py
// drives it; tools/mp32test.py too). --modules DIR (default $EDGELINE_MP32_DIR) is the folder
// whose node_modules holds the npm package pinned by package-lock.json beside this file
// (wasmport.ensure installs it there: npm ci).
//
// Like `micropython -X heapsize=N -c CODE` of the unix port: --heap is the MicroPython
// heap (k/m suffixes), --copy copies a host directory tree into the port's in-memory file
// system (emscripten MEMFS, which lives in JavaScript memory, outside the Python heap) before
// CODE runs, CODE's output goes to stdout, and the exit status is CODE's SystemExit code
// (1 for an uncaught exception, with its traceback on stderr).
//
// Garbage is collected only between calls from JavaScript. This port's gc_collect() just
// marks a collection pending, run when the host's call into MicroPython returns (its
// stack and registers cannot be scanned; ports/webassembly/main.c). Inside one call
// nothing is freed, so a long program needs a heap as large as all it ever allocates.
// --loop CODE2 runs CODE2 again and again, each time as a new call from the top level
// (so the garbage of one round is collected before the next), until it raises
// SystemExit, whose code is the exit status (tools/mptest.py start/step run one test a
// round).
//
// The heap grows, as the port's does: its GC adds heap areas from the C allocator when an
// allocation finds no room (MICROPY_GC_SPLIT_HEAP_AUTO, up to 128 MB more; gc.mem_free()
// counts those 128 MB). --heap is the first area. With --fixed-heap the runner refuses
// memory growth of the WebAssembly instance once MicroPython is initialised and takes the
// C allocator's free space but SLACK_BYTES (for the emscripten runtime's own small
// allocations: a directory stream, a path), so a MemoryError comes near --heap. Near only:
// the GC may still add small areas out of that slack, and once it has, opening a
// directory fails with ENOMEM (OSError 48). Use it to probe, not in the suite; board-sized
// heaps are the unix-port lane's job (tests/mp/micropython_test.py).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PKG_PATH = ["node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs"];
const SLACK_BYTES = 8 * 1024;

function parseSize(s) {
  const m = /^(\d+)([km]?)$/i.exec(s.trim());
  if (!m) throw new Error(`bad size: ${s}`);
  return parseInt(m[1], 10) * { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
}

function usage(msg) {
  process.stderr.write(`run.mjs: ${msg}\nusage: node run.mjs [--modules DIR] [--heap SIZE] [--fixed-heap] [--copy HOST_DIR:MP_DIR]... -c CODE [--loop CODE]\n`);
  process.exit(2);
}

let heap = 1024 * 1024;
let loop = null;
let code = null;
let fixed = false;
let modules = process.env.EDGELINE_MP32_DIR || null;
const copies = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === "--heap") heap = parseSize(argv[++i] ?? usage("--heap needs a size"));
  else if (a === "--copy") {
    const spec = argv[++i] ?? usage("--copy needs HOST_DIR:MP_DIR");
    const j = spec.lastIndexOf(":");
    if (j <= 0) usage(`--copy ${spec}: expected HOST_DIR:MP_DIR`);
    copies.push([spec.slice(0, j), spec.slice(j + 1)]);
  } else if (a === "--fixed-heap") fixed = true;
  else if (a === "--modules") modules = argv[++i] ?? usage("--modules needs a folder");
  else if (a === "--loop") loop = argv[++i] ?? usage("--loop needs code");
  else if (a === "-c") code = argv[++i] ?? usage("-c needs code");
  else usage(`unknown argument ${a}`);
}
if (code === null) usage("-c CODE is required");
if (modules === null) usage("--modules DIR (or $EDGELINE_MP32_DIR) is required");
const PKG = path.join(path.resolve(modules), ...PKG_PATH);
if (!fs.existsSync(PKG)) {
  process.stderr.write(`run.mjs: ${PKG} is missing: npm ci in ${modules} with package.json and package-lock.json of ${HERE}` +
    ` (python -m edgeline_host.firmware.wasmport ${modules} does)\n`);
  process.exit(2);
}

// Refuse growth of the instance's memory once MicroPython is up (see the header).
let allowGrowth = true;
const instantiate = WebAssembly.instantiate;
WebAssembly.instantiate = function (binary, imports) {
  const env = imports && imports.env;
  if (env && typeof env.emscripten_resize_heap === "function") {
    const resize = env.emscripten_resize_heap;
    env.emscripten_resize_heap = (size) => (allowGrowth ? resize(size) : 0);
  }
  return instantiate.call(this, binary, imports);
};

const { loadMicroPython } = await import(PKG);
const out = (s) => process.stdout.write(s);
const err = (s) => process.stderr.write(s);
const mp = await loadMicroPython({ heapsize: heap, stdout: out, stderr: err, linebuffer: false });

function copyTree(src, dst) {
  mp.FS.mkdirTree(dst);
  for (const ent of fs.readdirSync(src, { withFileTypes: true })) {
    const s = path.join(src, ent.name);
    const d = dst + "/" + ent.name;
    if (ent.isDirectory()) copyTree(s, d);
    else if (ent.isFile()) mp.FS.writeFile(d, fs.readFileSync(s));
  }
}
for (const [src, dst] of copies) copyTree(src, dst);

if (fixed) {
  allowGrowth = false;
  const malloc = mp._module._malloc;
  const held = [];
  for (let size = 64 * 1024 * 1024; size >= SLACK_BYTES; ) {
    const p = malloc(size);
    if (p) held.push(p);
    else size = Math.floor(size / 2);
  }
  // Give back SLACK_BYTES for the runtime's own small allocations.
  let given = 0;
  while (given < SLACK_BYTES && held.length) {
    mp._module._free(held.pop());
    given += SLACK_BYTES;
  }
}

function run(src) {
  // null when src returned, else the exit status.
  try {
    mp.runPython(src);
    return null;
  } catch (e) {
    return failure(e);
  }
}

function failure(e) {
  let status;
  if (e && e.name === "PythonError") {
    if (e.type === "SystemExit") {
      const m = /SystemExit:?\s*(\S*)\s*$/.exec(e.message.trim());
      const v = m && m[1] !== "" ? m[1] : "0";
      status = /^-?\d+$/.test(v) ? parseInt(v, 10) : (v === "None" ? 0 : 1);
      if (!/^-?\d+$/.test(v) && v !== "None" && v !== "") err(v + "\n");
    } else {
      err(e.message.endsWith("\n") ? e.message : e.message + "\n");
      status = 1;
    }
  } else {
    err(`run.mjs: ${e && e.message}\n`);
    status = 3;
  }
  return status;
}

let status = run(code);
if (status === null && loop !== null) {
  while (status === null) status = run(loop);
}
process.exitCode = status ?? 0;
