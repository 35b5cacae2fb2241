// Package natstest starts the real embedded NATS JetStream server for
// tests, with its own file store, and tears it down when the test ends.
package natstest

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/natsembed"
)

// Server starts a server that logs warnings to the test. listen makes it
// also listen on a free loopback port, for clients that dial a URL.
func Server(tb testing.TB, listen bool) *natsembed.Server {
	tb.Helper()
	opts := natsembed.Options{StoreDir: tb.TempDir(), Log: zerolog.New(zerolog.NewTestWriter(tb)).Level(zerolog.WarnLevel)}
	if listen {
		opts.ListenPort = -1
	}
	srv, err := natsembed.Start(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Shutdown)
	return srv
}

// Conn opens a connection to srv, closed when the test ends.
func Conn(tb testing.TB, srv *natsembed.Server, name string) *nats.Conn {
	tb.Helper()
	nc, err := srv.Connect(name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// JetStream starts a server and returns a connection to it with its
// JetStream context.
func JetStream(tb testing.TB, name string) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc := Conn(tb, Server(tb, false), name)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
}

// Dial connects to the server at url (one a test started as a process, or
// behind a proxy), closed when the test ends, and returns its JetStream
// context.
func Dial(tb testing.TB, url string, opts ...nats.Option) jetstream.JetStream {
	tb.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return js
}
