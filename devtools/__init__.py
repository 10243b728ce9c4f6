"""Development tooling shared by tests, benchmarks and scripts: ports, waiting, database and etcd launchers, a local cluster."""
