"""Development tooling shared by tests, benchmarks and scripts: database and etcd launchers, a local cluster."""
