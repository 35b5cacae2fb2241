package loadgen

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/node"
	"github.com/resoundhq/resound/internal/tlscert/tlstest"
)

const (
	itAppID  = "123456"
	itKey    = "lg-key"
	itSecret = "lg-secret"
)

// startNode runs a whole all-in-one Resound node (embedded JetStream,
// workers, gateway) in-process on a free loopback port.
func startNode(t *testing.T) string {
	t.Helper()
	return startNodeWith(t, nil)
}

func startNodeWith(t *testing.T, tweak func(*config.Settings)) string {
	t.Helper()
	s := config.Settings{
		AppID: itAppID, AppKey: itKey, AppSecret: itSecret,
		Host: "127.0.0.1", DataDir: t.TempDir(), Workers: 2,
		LogLevel: "warn", LogFormat: "json",
		PingInterval: config.Seconds(60 * time.Second), ActivityTimeout: config.Seconds(30 * time.Second),
		PongTimeout: config.Seconds(30 * time.Second), MaxMessageSize: 10000, MaxEventSize: 10240,
		MaxRequestSize: 262144, QueueMaxBytes: 64 << 20, QueueMaxAge: config.Seconds(time.Hour),
		CacheTTL: config.Seconds(30 * time.Minute), GatewayTTL: config.Seconds(15 * time.Second),
	}
	if tweak != nil {
		tweak(&s)
	}
	apps, err := config.NewApps([]config.App{{ID: s.AppID, Key: s.AppKey, Secret: s.AppSecret,
		PingInterval: s.PingInterval, ActivityTimeout: s.ActivityTimeout, MaxMessageSize: s.MaxMessageSize}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Options{Config: &config.Config{Settings: s, Apps: apps}, Listener: ln,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	if s.TLS() {
		return "https://" + ln.Addr().String()
	}
	return "http://" + ln.Addr().String()
}

// Over TLS: the WebSockets go through the bridge to wss://, the API to
// https://, both verified against the test CA; counts exact, closes clean.
func TestLoadOverTLS(t *testing.T) {
	_, files, err := tlstest.Write(t.TempDir(), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	url := startNodeWith(t, func(s *config.Settings) { s.TLSCert, s.TLSKey = files.Cert, files.Key })
	s := runLoad(t, Config{Mode: ModeFanout, URL: url, CAFile: files.CA, Conns: 40, Channels: 4, Rate: 500, Events: 100,
		Duration: 10 * time.Second, Sources: []netip.Addr{mustAddr("127.0.0.2"), mustAddr("127.0.0.3")}})
	f := s.Fanout
	if s.Conns.Subscribed != 40 || s.Conns.ClosedClean != 40 || f.Expected != 100*10 || f.Deliveries != 100*10 ||
		f.Missing != 0 || f.Duplicates != 0 || f.OutOfOrder != 0 || len(f.RequestFailures) != 0 {
		t.Fatalf("conns %+v fanout %+v", s.Conns, *f)
	}
	// Without the CA, nothing connects and nothing is triggered.
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
	bad, err := Run(context.Background(), Config{Mode: ModeIdle, URL: url, AppID: itAppID, Key: itKey, Secret: itSecret,
		Run: "untrusted", Conns: 2, Channels: 1, Duration: 100 * time.Millisecond, ConnectTimeout: 2 * time.Second}, log)
	if bad == nil || bad.Conns.Subscribed != 0 {
		t.Fatalf("untrusted certificate: %+v, %v", bad, err)
	}
}

func runLoad(t *testing.T, cfg Config) *Summary {
	t.Helper()
	cfg.AppID, cfg.Key, cfg.Secret = itAppID, itKey, itSecret
	cfg.Run = strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	s, err := Run(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("run: %v (summary %+v)", err, s)
	}
	if s.Conns.Failed != 0 || s.Conns.Dropped != 0 || len(s.Conns.Failures) != 0 {
		t.Fatalf("connections: %+v", s.Conns)
	}
	return s
}

func TestLoadAgainstRealNode(t *testing.T) {
	url := startNode(t)

	t.Run("fanout", func(t *testing.T) {
		s := runLoad(t, Config{Mode: ModeFanout, URL: url, Conns: 50, Channels: 5, Rate: 500, Events: 200, Duration: 10 * time.Second})
		f := s.Fanout
		if s.Conns.Subscribed != 50 || f.EventsSent != 200 || f.Subscribers != 50 {
			t.Fatalf("subscribed %d, sent %d, subscribers %d", s.Conns.Subscribed, f.EventsSent, f.Subscribers)
		}
		if f.Expected != 200*10 || f.Deliveries != 200*10 || f.Missing != 0 || f.Duplicates != 0 || f.OutOfOrder != 0 || f.Unexpected != 0 || f.Malformed != 0 {
			t.Fatalf("fanout %+v", *f)
		}
		if s.LatencyMs == nil || s.LatencyMs.Count != 2000 || len(f.RequestFailures) != 0 {
			t.Fatalf("latency %+v, failures %v", s.LatencyMs, f.RequestFailures)
		}
	})

	t.Run("fanout batch unbounded", func(t *testing.T) {
		s := runLoad(t, Config{Mode: ModeFanout, URL: url, Conns: 20, Channels: 4, Batch: 10, Events: 400, Duration: 10 * time.Second})
		f := s.Fanout
		// A connection whose subscription was answered only after the
		// load began (a busy machine) counts what came before as its gap:
		// every one of those must have arrived too.
		if f.EventsSent != 400 || f.Deliveries+f.GapReceived != 400*5 || f.GapReceived != f.Gap || f.Missing != 0 || f.Duplicates != 0 || f.OutOfOrder != 0 || f.Requests != 40 {
			t.Fatalf("fanout %+v", *f)
		}
	})

	t.Run("shard by conns over two URLs", func(t *testing.T) {
		// Two processes' worth of connections on one channel; shard 0
		// waits for all of them, sends, and tells shard 1 the count.
		sums := make([]*Summary, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range sums {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sums[i], errs[i] = Run(context.Background(), Config{Mode: ModeFanout, URL: url, WSURLs: []string{url, url},
					AppID: itAppID, Key: itKey, Secret: itSecret, Run: "byconns", Conns: 30, Channels: 1, Rate: 500, Events: 100,
					Duration: 10 * time.Second, Shard: i, Shards: 2, ShardBy: ShardConns}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
			}()
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("shards: %v, %v", errs[0], errs[1])
		}
		s, err := Merge(sums)
		if err != nil {
			t.Fatal(err)
		}
		f := s.Fanout
		if s.Conns.Subscribed != 30 || f.EventsSent != 100 || f.Subscribers != 30 || f.Expected != 3000 || f.Deliveries != 3000 ||
			f.Missing != 0 || f.Duplicates != 0 || f.OutOfOrder != 0 || f.Unexpected != 0 || f.Gap != 0 {
			t.Fatalf("conns %+v fanout %+v", s.Conns, *f)
		}
		if sums[1].Fanout.EventsSent != 0 || sums[1].Fanout.Deliveries != 1500 || sums[1].Fanout.DeliveriesPerSec <= 0 {
			t.Fatalf("receiving shard: %+v", *sums[1].Fanout)
		}
	})

	t.Run("idle", func(t *testing.T) {
		s := runLoad(t, Config{Mode: ModeIdle, URL: url, Conns: 100, Channels: 10, Duration: 200 * time.Millisecond,
			PID: os.Getpid(), Sources: []netip.Addr{mustAddr("127.0.0.2"), mustAddr("127.0.0.3")}})
		if s.Conns.Established != 100 || s.Conns.Subscribed != 100 || s.Conns.ClosedClean != 100 {
			t.Fatalf("conns %+v", s.Conns)
		}
		if s.Idle == nil || s.Idle.TargetPID != os.Getpid() || s.Idle.TargetRSSAfterKiB == 0 || s.ConnectMs.Count != 100 {
			t.Fatalf("idle %+v connect %+v", s.Idle, s.ConnectMs)
		}
	})

	t.Run("churn", func(t *testing.T) {
		// The pacer may start one connection fewer than planned when the
		// window closes on a busy machine, so the counts are checked for
		// consistency, not to the exact plan.
		s := runLoad(t, Config{Mode: ModeChurn, URL: url, Rate: 200, Duration: 500 * time.Millisecond, Channels: 3})
		c := s.Conns
		if c.Planned != 100 || c.Attempted < 90 || c.Failed != 0 || c.Dropped != 0 ||
			c.Established != c.Attempted || s.Churn.Completed != c.Established || s.ConnectMs.Count != uint64(c.Established) {
			t.Fatalf("conns %+v churn %+v connect %+v", c, s.Churn, s.ConnectMs)
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		s, err := Run(context.Background(), Config{Mode: ModeIdle, URL: url, Key: "nope", Conns: 3, Channels: 1, Duration: time.Millisecond, Run: "x"},
			zerolog.New(zerolog.NewTestWriter(t)))
		if err != nil || s.Conns.Failed != 3 || s.Conns.Failures["pusher_error_4001"] != 3 {
			t.Fatalf("%v %+v", err, s.Conns)
		}
	})

	t.Run("bad secret", func(t *testing.T) {
		s, err := Run(context.Background(), Config{Mode: ModeFanout, URL: url, AppID: itAppID, Key: itKey, Secret: "wrong",
			Conns: 2, Channels: 1, Events: 5, Duration: 5 * time.Second, Run: "y"}, zerolog.New(zerolog.NewTestWriter(t)))
		if err == nil || s.Fanout.EventsSent != 0 || s.Fanout.RequestFailures["status_401"] != 1 {
			t.Fatalf("%v %+v", err, s.Fanout)
		}
	})
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
