// Package deployments checks the files in deployments/ (Dockerfile, Compose,
// HAProxy, Kubernetes, systemd, Grafana) against each other and against the
// gateway and worker binaries: structure, probes, ports, grace periods, the
// environment variable names they set, and the metric names the dashboard
// queries. The checks live in the _test.go files; nothing here runs Docker
// or a cluster.
package deployments
