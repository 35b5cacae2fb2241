//go:build !faultinject

package gateway

import "net/http"

// The fault-injection hooks of faultinject.go, compiled to nothing.

func faultOnMessage([]byte)              {}
func faultOnSubscribeWork(string)        {}
func faultOnDeliver([]byte)              {}
func faultOnHandshakeHeader(_, _ []byte) {}
func faultOnHTTPRequest(_ *http.Request) {}
