"""edgeline host side (CPython): CLI, agent, gateway, transports, firmware tooling."""
