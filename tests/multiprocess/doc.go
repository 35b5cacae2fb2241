// Package multiprocess tests Resound as it is deployed: the gateway and
// worker binaries and a real nats-server, each in its own process, talking
// only over the network, with cmd/loadgen as the load in the fault tests.
// In the link tests a process reaches nats-server through a TCP proxy
// (internal/tcpproxy) that the test cuts and restores under load.
// The tests live in the _test.go files; TestMain builds the four binaries
// once.
package multiprocess
