//go:build faultinject

package gateway

import (
	"bytes"
	"net/http"
)

// Fault injection, built only with -tags faultinject: the adversarial
// tests build a gateway that panics on purpose at each edge that handles
// client input, and check that the process survives and only the
// connection concerned is closed. Normal builds compile the no-ops in
// faultinject_off.go instead.

var (
	faultPollerMarker   = []byte("resound-fault:panic-poller")
	faultDispatchMarker = []byte("resound-fault:panic-dispatch")
)

// faultAsyncChannel is the channel whose subscription panics on its lane.
const faultAsyncChannel = "resound-fault-panic-async"

// faultInjection lets hot paths skip the hooks entirely in normal builds.
const faultInjection = true

func faultOnMessage(msg []byte) {
	if bytes.Contains(msg, faultPollerMarker) {
		panic("fault injection: poller")
	}
}

func faultOnSubscribeWork(channel string) {
	if channel == faultAsyncChannel {
		panic("fault injection: async")
	}
}

func faultOnDeliver(frame []byte) {
	if bytes.Contains(frame, faultDispatchMarker) {
		panic("fault injection: dispatcher")
	}
}

func faultOnHandshakeHeader(k, v []byte) {
	if bytes.EqualFold(k, []byte("X-Resound-Fault")) && bytes.Equal(v, []byte("panic")) {
		panic("fault injection: handshake")
	}
}

func faultOnHTTPRequest(r *http.Request) {
	if r.Header.Get("X-Resound-Fault") == "panic" {
		panic("fault injection: http")
	}
}
