// Package natsembed runs the real NATS server, with JetStream, inside the
// Resound process. It is what makes the all-in-one gateway one command, and
// what the integration tests run against: the same server a cluster runs,
// not a mock of it.
package natsembed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Options configure an embedded server.
type Options struct {
	// StoreDir holds the JetStream file store. Required: two servers must
	// never share one.
	StoreDir string
	// ListenPort, when non-zero, also listens on 127.0.0.1 (-1 picks a free
	// port) so that outside tools and processes can connect. Zero serves
	// in-process connections only.
	ListenPort int
	Log        zerolog.Logger
}

// Server is a running embedded NATS server.
type Server struct {
	ns *server.Server
}

// Start starts a server and waits until it accepts connections.
func Start(opts Options) (*Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	if err := os.MkdirAll(opts.StoreDir, 0o700); err != nil {
		return nil, err
	}
	sopts := &server.Options{
		ServerName: "resound-embedded",
		JetStream:  true,
		StoreDir:   filepath.Clean(opts.StoreDir),
		NoSigs:     true, // the Resound process owns signal handling
		DontListen: opts.ListenPort == 0,
		Host:       "127.0.0.1",
		Port:       opts.ListenPort,
		// Deliveries can be as large as an event frame plus envelope; the
		// default 1 MiB is ample, but be explicit.
		MaxPayload: 8 << 20,
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: %w", err)
	}
	ns.SetLoggerV2(&logAdapter{log: opts.Log.With().Str("component", "nats").Logger()}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("natsembed: server did not become ready within 30s")
	}
	return &Server{ns: ns}, nil
}

// Connect opens a client connection to the server, in process unless the
// server was asked to listen.
func (s *Server) Connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{nats.Name(name), nats.InProcessServer(s.ns)}, extra...)
	return nats.Connect("", opts...)
}

// ClientURL is the URL outside processes can use, or "" when the server
// listens in process only.
func (s *Server) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// Disconnect drops a client's connection, as a network fault would: the
// client reconnects by itself. Tests use it to make one client reconnect
// while the others stay connected.
func (s *Server) Disconnect(nc *nats.Conn) error {
	id, err := nc.GetClientID()
	if err != nil {
		return err
	}
	return s.ns.DisconnectClientByID(id)
}

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

type logAdapter struct{ log zerolog.Logger }

func (l *logAdapter) Noticef(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l *logAdapter) Warnf(format string, v ...any)   { l.log.Warn().Msgf(format, v...) }
func (l *logAdapter) Fatalf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l *logAdapter) Errorf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l *logAdapter) Debugf(format string, v ...any)  { l.log.Debug().Msgf(format, v...) }
func (l *logAdapter) Tracef(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
