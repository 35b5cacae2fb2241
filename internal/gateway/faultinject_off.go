//go:build !faultinject

package gateway

import "net/http"

// The fault-injection hooks of faultinject.go, compiled to nothing.

// faultInjection lets hot paths skip the hooks entirely in normal builds.
const faultInjection = false

func faultOnMessage([]byte)              {}
func faultOnSubscribeWork(string)        {}
func faultOnDeliver([]byte)              {}
func faultOnHandshakeHeader(_, _ []byte) {}
func faultOnHTTPRequest(_ *http.Request) {}
