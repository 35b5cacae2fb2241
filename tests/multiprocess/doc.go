// Package multiprocess tests Resound as it is deployed: the gateway and
// worker binaries and a real nats-server, each in its own process, talking
// only over the network. The tests live in the _test.go files; TestMain
// builds the three binaries once.
package multiprocess
