package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/resoundhq/resound/protocol"
)

// Modes.
const (
	ModeIdle   = "idle"
	ModeFanout = "fanout"
	ModeChurn  = "churn"
)

// Protocols the load generator speaks.
const (
	ProtocolPusher     = "pusher"
	ProtocolCentrifugo = "centrifugo"
)

// How -shard splits the work.
const (
	ShardChannels = "channels"
	ShardConns    = "conns"
)

// DefaultMaxConnsPerProcess keeps a process under this machine's open-files
// hard limit (20,000), with room for the trigger client, epoll and logs.
const DefaultMaxConnsPerProcess = 19000

// Config is one run.
type Config struct {
	Mode string
	// Protocol is pusher (the default) or centrifugo: Centrifugo's JSON
	// protocol at {prefix}/connection/websocket, events through its server
	// API with Secret as the API key (AppID and Key are not used).
	Protocol string
	// URL is the server's base URL: http://host:port[/prefix] (ws:// works
	// too). WebSockets go to {prefix}/app/{key}, API calls to
	// {prefix}/apps/{id}/...
	URL string
	// WSURLs, when set, are where the WebSockets go instead of URL, spread
	// as wsTarget says; API calls still go to URL only. One URL for the
	// API keeps each channel's requests on one path, so a gateway killed
	// or drained among WSURLs takes no acknowledged request with it.
	WSURLs []string
	// Reconnect makes a connection that the server closes (or loses) after
	// it subscribed open again, to the next of WSURLs, and subscribe
	// again. How that is counted is explained at conn.
	Reconnect bool
	// ShardBy is how -shard splits the work: ShardChannels (each process
	// owns some channels, their connections and their events) or
	// ShardConns (each process holds every n-th connection of every
	// channel; shard 0 triggers every channel; see receiveOnly).
	ShardBy            string
	Payload            int // fanout: bytes of padding in each event's data
	AppID, Key, Secret string
	Origin             string
	Conns              int           // connections (idle, fanout); cap on the total (churn)
	Channels           int           // channels the connections spread over
	Duration           time.Duration // hold (idle), send (fanout), or churn window
	Ramp               float64       // connections opened per second while ramping up
	Rate               float64       // events/s (fanout, 0 = unbounded) or connections/s (churn)
	Events             int           // fanout: stop after this many events (0 = duration only)
	Batch              int           // fanout: events per request (>1 uses batch_events)
	Inflight           int           // fanout: concurrent HTTP requests at most
	Drain              time.Duration // fanout: how long to wait for late deliveries
	ConnectTimeout     time.Duration // connect to subscribed, per connection
	MaxPending         int           // connections being set up at once
	Pollers            int
	Sources            []netip.Addr
	MaxConnsPerProcess int
	Run                string        // run id: part of the channel names
	Shard, Shards      int           // this process is shard Shard of Shards
	PID                int           // target process for RSS samples (0: none)
	ChurnHold          time.Duration // churn: how long a subscribed connection stays before closing
	ProgressInterval   time.Duration
	CloseGrace         time.Duration
	// CAFile is a PEM file of CAs to trust for https:// and wss:// URLs,
	// besides the system's (a test CA, say).
	CAFile string
	// All puts every connection on a second channel besides its own:
	// AllChannel(Run), which every connection of every process shares.
	// The load generator sends nothing there; another process (a harness,
	// with a Broadcaster) numbers the events it sends 1, 2, 3…, up to
	// MaxAllEvents, and each process counts, per event, the connections
	// that got it (once each) and the last one's latency (AllStats).
	All bool
	// PresenceEvery makes every n-th channel of each shard a presence
	// channel (presence-lg-<run>-<c>): its connections subscribe with a
	// channel auth signed with Secret, each as a user of its own. 0: none.
	PresenceEvery int
	// Control, when set, is where the run's commands come from, one a
	// line (the -control flag reads stdin): "send" starts the fan-out's
	// sending (which otherwise starts once the connections are set up),
	// "phase NAME" starts a new latency phase (each phase's latencies are
	// reported apart, under its name), "stop" ends the hold or the sending
	// (Duration still bounds both), as does the end of the input. The
	// connect phase then waits for every connection however long it takes.
	Control io.Reader
}

// MaxAllEvents bounds the events counted on the all channel: each
// connection keeps one bit per event.
const MaxAllEvents = 64

// AllChannel is the channel every connection of a run with All is on.
func AllChannel(run string) string { return "lg-" + run + "-all" }

// isPresence reports whether channel c is a presence channel: every n-th
// of each shard's channels (shard i owns c = i, i+shards, …), so that every
// process gets its share.
func (c *Config) isPresence(ch int) bool {
	return c.PresenceEvery > 0 && (ch/max(1, c.Shards))%c.PresenceEvery == 0
}

// target is the parsed URL.
type target struct {
	addr     netip.AddrPort
	hostHdr  string // Host header value
	prefix   string // path prefix, no trailing slash
	wsPath   string // {prefix}/app/{key}?protocol=7...
	httpBase string // http://host:port, or https://
	// tls: the server speaks TLS (https:// or wss://); serverName is the
	// name its certificate must show.
	tls        bool
	serverName string
}

func parseTarget(raw, key, proto string) (target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("-url: %v", err)
	}
	secure := false
	switch u.Scheme {
	case "http", "ws":
	case "https", "wss":
		secure = true
	default:
		return target{}, fmt.Errorf("-url: scheme %q, want http://, ws://, https:// or wss://", u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
		if secure {
			port = "443"
		}
	}
	ap, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return target{}, fmt.Errorf("-url: %v", err)
	}
	addr, ok := netip.AddrFromSlice(ap.IP)
	if !ok {
		return target{}, fmt.Errorf("-url: cannot use address %v", ap.IP)
	}
	prefix := strings.TrimRight(u.Path, "/")
	t := target{
		addr:     netip.AddrPortFrom(addr.Unmap(), uint16(ap.Port)),
		hostHdr:  u.Host,
		prefix:   prefix,
		httpBase: "http://" + u.Host,
		tls:      secure, serverName: host,
	}
	if secure {
		t.httpBase = "https://" + u.Host
	}
	t.wsPath = prefix + "/app/" + url.PathEscape(key) + "?protocol=7&client=resound-loadgen&version=1.0"
	if proto == ProtocolCentrifugo {
		t.wsPath = prefix + centrifugoWSPath
	}
	return t, nil
}

// ParseSources reads "-sources": a comma-separated list of IPv4/IPv6
// addresses and IPv4 ranges "a.b.c.d-e.f.g.h" (inclusive).
func ParseSources(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if lo, hi, ok := strings.Cut(part, "-"); ok {
			a, err := netip.ParseAddr(strings.TrimSpace(lo))
			if err != nil {
				return nil, fmt.Errorf("-sources %q: %v", part, err)
			}
			b, err := netip.ParseAddr(strings.TrimSpace(hi))
			if err != nil {
				return nil, fmt.Errorf("-sources %q: %v", part, err)
			}
			if !a.Is4() || !b.Is4() {
				return nil, fmt.Errorf("-sources %q: ranges are IPv4 only", part)
			}
			x, y := binary.BigEndian.Uint32(a.AsSlice()), binary.BigEndian.Uint32(b.AsSlice())
			if y < x || y-x > 1<<16 {
				return nil, fmt.Errorf("-sources %q: empty or huge range", part)
			}
			for v := x; ; v++ {
				var b4 [4]byte
				binary.BigEndian.PutUint32(b4[:], v)
				out = append(out, netip.AddrFrom4(b4))
				if v == y {
					break
				}
			}
			continue
		}
		a, err := netip.ParseAddr(part)
		if err != nil {
			return nil, fmt.Errorf("-sources %q: %v", part, err)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// ParseShard reads "-shard i/n".
func ParseShard(s string) (i, n int, err error) {
	if s == "" {
		return 0, 1, nil
	}
	a, b, ok := strings.Cut(s, "/")
	if ok {
		i, err = strconv.Atoi(a)
		if err == nil {
			n, err = strconv.Atoi(b)
		}
	}
	if !ok || err != nil || n < 1 || i < 0 || i >= n {
		return 0, 0, fmt.Errorf("-shard %q: want i/n with 0 <= i < n", s)
	}
	return i, n, nil
}

// plan is what this process does, derived from Config and the shard.
type plan struct {
	// conns lists this process's connections: global index, channel and
	// WebSocket target.
	conns []connSpec
	// channels lists the channel indexes this process triggers.
	channels []int
	names    []string // channel name by global index
	// receiveOnly: this process holds connections but triggers nothing
	// (a shard other than 0 with ShardConns). It learns how many events
	// each channel got from the "lg-end" event the triggering shard sends
	// on every channel after its last acknowledged one.
	receiveOnly bool
}

type connSpec struct {
	idx int32
	ch  int32
	tgt int32 // index into the WebSocket targets
}

func channelName(run string, c int) string { return "lg-" + run + "-" + strconv.Itoa(c) }

// wsTarget is the WebSocket URL (of n) that connection k (of all shards)
// starts on: the r-th subscriber of channel c (k = c + r·C) goes to
// (c + r) mod n. Over all connections that is round-robin, and a
// channel's subscribers rotate through the URLs too, so with at least n
// subscribers a channel has some on every URL (plain k mod n would put
// all of a channel's subscribers on one URL whenever n divides C).
func wsTarget(k, channels, n int) int32 {
	return int32((k%channels + k/channels) % n)
}

// makePlan splits the work. Connection k (of all shards) is on channel
// k mod C. With ShardChannels, shard i owns the channels c with c mod n == i
// and the connections on them, so every channel is received and
// triggered by one process, and each process's counts are exact on their
// own. With ShardConns, shard i holds the connections k with k mod n == i,
// of every channel, and only shard 0 triggers.
func makePlan(c *Config) plan {
	p := plan{names: make([]string, c.Channels)}
	byConns := c.ShardBy == ShardConns
	for ch := 0; ch < c.Channels; ch++ {
		p.names[ch] = channelName(c.Run, ch)
		if c.isPresence(ch) {
			p.names[ch] = "presence-" + p.names[ch]
		}
		if (byConns && c.Shard == 0) || (!byConns && ch%c.Shards == c.Shard) {
			p.channels = append(p.channels, ch)
		}
	}
	p.receiveOnly = byConns && c.Shard != 0
	if c.Mode == ModeChurn {
		return p
	}
	nt := max(1, len(c.WSURLs))
	for k := 0; k < c.Conns; k++ {
		ch := k % c.Channels
		mine := ch%c.Shards == c.Shard
		if byConns {
			mine = k%c.Shards == c.Shard
		}
		if mine {
			p.conns = append(p.conns, connSpec{idx: int32(k), ch: int32(ch), tgt: wsTarget(k, c.Channels, nt)})
		}
	}
	return p
}

// Validate fills defaults and checks limits.
func (c *Config) Validate() error {
	switch c.Mode {
	case ModeIdle, ModeFanout, ModeChurn:
	default:
		return fmt.Errorf("unknown mode %q (idle, fanout, churn)", c.Mode)
	}
	switch c.Protocol {
	case "":
		c.Protocol = ProtocolPusher
	case ProtocolPusher, ProtocolCentrifugo:
	default:
		return fmt.Errorf("unknown protocol %q (pusher, centrifugo)", c.Protocol)
	}
	if c.Protocol == ProtocolCentrifugo {
		if c.Mode == ModeFanout && c.Secret == "" {
			return errors.New("fanout with -protocol centrifugo needs -secret: Centrifugo's HTTP API key")
		}
	} else {
		if c.Key == "" {
			return errors.New("-key is required")
		}
		if c.Mode == ModeFanout && (c.AppID == "" || c.Secret == "") {
			return errors.New("fanout needs -app-id and -secret to trigger events")
		}
	}
	if c.Channels < 1 {
		return errors.New("-channels must be at least 1")
	}
	if c.Conns < 0 || c.Duration < 0 || c.Rate < 0 || c.Events < 0 {
		return errors.New("-conns, -duration, -rate and -events cannot be negative")
	}
	if c.Shards < 1 {
		c.Shard, c.Shards = 0, 1
	}
	switch c.ShardBy {
	case "":
		c.ShardBy = ShardChannels
	case ShardChannels:
	case ShardConns:
		if c.Mode == ModeChurn {
			return errors.New("-shard-by conns: churn shards by channels only")
		}
		if c.Reconnect {
			// A receiving shard cannot know which events were sent while
			// one of its connections was away.
			return errors.New("-reconnect works with -shard-by channels only")
		}
	default:
		return fmt.Errorf("-shard-by %q: want channels or conns", c.ShardBy)
	}
	if c.Reconnect && c.Mode == ModeChurn {
		return errors.New("-reconnect: churn closes its connections itself; use it with idle or fanout")
	}
	if c.All || c.PresenceEvery != 0 || c.Control != nil {
		switch {
		case c.Mode == ModeChurn:
			return errors.New("-all, -presence-every and -control work with idle and fanout")
		case c.Protocol == ProtocolCentrifugo:
			return errors.New("-all, -presence-every and -control speak the Pusher protocol only")
		case c.ShardBy == ShardConns:
			// A receiving shard's counts come from the end events, and the
			// server's subscription counts leave presence channels out.
			return errors.New("-all, -presence-every and -control work with -shard-by channels only")
		case c.PresenceEvery < 0:
			return errors.New("-presence-every cannot be negative")
		case c.PresenceEvery > 0 && c.Secret == "":
			return errors.New("-presence-every needs -secret to sign the presence subscriptions")
		}
	}
	if c.Payload < 0 || c.Payload > maxPayload {
		return fmt.Errorf("-payload: 0 to %d bytes", maxPayload)
	}
	for _, u := range c.WSURLs {
		if _, err := parseTarget(u, c.Key, c.Protocol); err != nil {
			return fmt.Errorf("-ws-urls %q: %v", u, err)
		}
	}
	if c.Ramp <= 0 {
		c.Ramp = 2000
	}
	if c.Batch < 1 {
		c.Batch = 1
	}
	if c.Batch > 100 {
		return errors.New("-batch: at most 100 (Pusher allows 10)")
	}
	if c.Inflight < 1 {
		c.Inflight = 64
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 5 * time.Second
	}
	if c.CloseGrace <= 0 {
		c.CloseGrace = 3 * time.Second
	}
	if c.MaxConnsPerProcess <= 0 {
		c.MaxConnsPerProcess = DefaultMaxConnsPerProcess
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 1000
	}
	c.MaxPending = min(c.MaxPending, c.MaxConnsPerProcess)
	if c.Pollers <= 0 {
		c.Pollers = 2
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = 2 * time.Second
	}
	if c.Mode == ModeChurn {
		if c.Rate <= 0 {
			return errors.New("churn needs -rate (connections per second)")
		}
		if c.Duration <= 0 {
			return errors.New("churn needs -duration")
		}
	} else {
		if c.Conns < 1 {
			return errors.New("-conns must be at least 1")
		}
		mine := len(makePlan(c).conns)
		if mine > c.MaxConnsPerProcess {
			return fmt.Errorf("this process would hold %d connections, over -max-conns-per-process %d "+
				"(the open-files hard limit here is 20,000 and cannot be raised): run several processes, "+
				"each with -shard i/n and its own -sources, and combine them with `loadgen merge`", mine, c.MaxConnsPerProcess)
		}
		if c.Mode == ModeFanout && c.Duration <= 0 && c.Events == 0 {
			return errors.New("fanout needs -duration or -events")
		}
	}
	if c.Run == "" || !protocol.ValidChannelName(channelName(c.Run, c.Channels-1)) ||
		(c.PresenceEvery > 0 && !protocol.ValidChannelName("presence-"+channelName(c.Run, c.Channels-1))) ||
		(c.All && !protocol.ValidChannelName(AllChannel(c.Run))) {
		return fmt.Errorf("-run %q: not usable in a channel name (letters, digits, _-=@,.;)", c.Run)
	}
	for _, s := range c.Sources {
		for _, u := range c.wsURLs() {
			if s.Is4() != targetIs4(u, c.Key, c.Protocol) {
				return fmt.Errorf("-sources %v: not the address family of %s", s, u)
			}
		}
	}
	return nil
}

// wsURLs are the URLs the WebSockets go to.
func (c *Config) wsURLs() []string {
	if len(c.WSURLs) > 0 {
		return c.WSURLs
	}
	return []string{c.URL}
}

func targetIs4(u, key, proto string) bool {
	t, err := parseTarget(u, key, proto)
	return err != nil || t.addr.Addr().Is4()
}

// maxPayload bounds -payload: Pusher's limit on an event's data is 10 KB,
// and a server configured for more is still not asked for megabytes.
const maxPayload = 1 << 20
