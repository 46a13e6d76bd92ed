"""The systemd units of the agent and the gateway (``edgeline systemd-unit agent|gateway``).

Each unit is ``Type=notify``: the service sends ``READY=1`` once it serves and
``WATCHDOG=1`` while its event loop runs (sdnotify.py), so ``systemctl start`` returns
when it really serves and systemd restarts one that hangs (``WatchdogSec=``). Before
each start ``ExecStartPre=`` runs the service's ``--check``: a bad config fails the start
with its one line in the journal instead of a restart loop. The services stop cleanly on
SIGTERM (the agent commits every log first), within ``TimeoutStopSec=``.

Hardening: the service runs as its own user with no capabilities, sees the file system
read-only but for its state directory (``/var/lib/edgeline``, ``StateDirectory=``),
reads its config from ``/etc/edgeline`` (``ConfigurationDirectory=``), and is limited to
Unix and IP sockets and the system calls of an ordinary service.
``MemoryDenyWriteExecute=`` is left out on purpose: a table topic's WebAssembly merge
(wasmtime) compiles code at run time. Listening on a port below 1024 needs
``AmbientCapabilities=CAP_NET_BIND_SERVICE`` (and the same in
``CapabilityBoundingSet=``).
"""
import os
import shutil
import sys

HARDENING = """\
User={user}
Group={user}
StateDirectory=edgeline
StateDirectoryMode=0750
ConfigurationDirectory=edgeline
UMask=0027
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
"""

AGENT = """\
# edgeline edge agent: `edgeline systemd-unit agent > /etc/systemd/system/edgeline-agent.service`
# (docs/operations.md). Its edge.yaml's data_dir must be under /var/lib/edgeline.
[Unit]
Description=edgeline edge agent
Documentation=file://{docs}/operations.md
Wants=network-online.target
After=network-online.target time-sync.target

[Service]
Type=notify
NotifyAccess=main
ExecStartPre={exe} agent --config {config} --check
ExecStart={exe} agent --config {config}
Environment=EDGELINE_LOG_FORMAT=json
Restart=always
RestartSec=5
WatchdogSec=30
TimeoutStartSec=120
TimeoutStopSec=60
KillMode=mixed
{hardening}
[Install]
WantedBy=multi-user.target
"""

GATEWAY = """\
# edgeline gateway: `edgeline systemd-unit gateway > /etc/systemd/system/edgeline-gateway.service`
# (docs/operations.md). Its settings: {env_file} (boards/x86-gateway/gateway.env);
# its store (EDGELINE_GATEWAY_DB) must be under /var/lib/edgeline.
[Unit]
Description=edgeline gateway
Documentation=file://{docs}/operations.md
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
EnvironmentFile={env_file}
ExecStartPre={exe} gateway --check
ExecStart={exe} gateway
ExecReload=/bin/kill -HUP $MAINPID
Environment=EDGELINE_LOG_FORMAT=json
Restart=always
RestartSec=5
WatchdogSec=30
TimeoutStartSec=120
TimeoutStopSec=60
KillMode=mixed
{hardening}
[Install]
WantedBy=multi-user.target
"""

DEFAULT_CONFIG = "/etc/edgeline/edge.yaml"
DEFAULT_ENV_FILE = "/etc/edgeline/gateway.env"
DEFAULT_USER = "edgeline"


def default_exe():
    """The ``edgeline`` beside this Python (a venv's bin/), else the one on PATH."""
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "edgeline")
    if os.path.exists(here):
        return here
    return shutil.which("edgeline") or "/usr/local/bin/edgeline"


def unit(service, exe=None, config=DEFAULT_CONFIG, env_file=DEFAULT_ENV_FILE, user=DEFAULT_USER,
         docs="/usr/share/doc/edgeline"):
    """The unit file text of ``service`` (``agent`` or ``gateway``)."""
    if service not in ("agent", "gateway"):
        raise ValueError("no unit for %r: agent or gateway" % service)
    for name, value in (("exe", exe), ("config", config), ("env_file", env_file)):
        if value is not None and (not os.path.isabs(value) or any(c.isspace() for c in value)):
            raise ValueError("%s must be an absolute path without spaces (systemd's), got %r" % (name, value))
    if not user or not all(c.isalnum() or c in "_-" for c in user):
        raise ValueError("user must be a user name, got %r" % user)
    fields = {"exe": exe or default_exe(), "config": config, "env_file": env_file, "docs": docs,
              "hardening": HARDENING.format(user=user)}
    return (AGENT if service == "agent" else GATEWAY).format(**fields)
