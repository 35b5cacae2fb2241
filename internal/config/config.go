// Package config reads Resound's settings from the environment and its apps
// from a file.
//
// A Laravel app's .env already names its Reverb app and server
// (REVERB_APP_ID, REVERB_SERVER_PORT, ...), so Resound reads those names
// unchanged. NATS_URL is the name the NATS tools use. Everything that is
// Resound's own starts with RESOUND_.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/resoundhq/resound/protocol"
)

// Settings are the process's settings, from the environment.
type Settings struct {
	AppID              string  `envconfig:"REVERB_APP_ID" desc:"id of the app defined in the environment (the HTTP API's /apps/{id})"`
	AppKey             string  `envconfig:"REVERB_APP_KEY" desc:"key of that app (clients connect to /app/{key})"`
	AppSecret          string  `envconfig:"REVERB_APP_SECRET" desc:"secret of that app (signs API requests and channel auth)"`
	AppPingInterval    Seconds `envconfig:"REVERB_APP_PING_INTERVAL" desc:"that app's ping interval in seconds (default RESOUND_PING_INTERVAL)"`
	AppActivityTimeout Seconds `envconfig:"REVERB_APP_ACTIVITY_TIMEOUT" desc:"that app's activity timeout in seconds (default RESOUND_ACTIVITY_TIMEOUT)"`
	AppMaxMessageSize  int     `envconfig:"REVERB_APP_MAX_MESSAGE_SIZE" desc:"that app's max client message size in bytes (default RESOUND_MAX_MESSAGE_SIZE)"`
	AppMaxConnections  int     `envconfig:"REVERB_APP_MAX_CONNECTIONS" desc:"that app's connection cap across the cluster; 0 or unset is no cap"`
	// Reverb's published config defaults to members; so does Resound.
	AppAcceptClientEventsFrom string `envconfig:"REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM" desc:"who may send client events on that app: members (default), all or none"`

	Host string `envconfig:"REVERB_SERVER_HOST" default:"0.0.0.0" desc:"address the gateway binds"`
	Port int    `envconfig:"REVERB_SERVER_PORT" default:"8080" desc:"port the gateway binds (WebSocket and HTTP API)"`
	Path string `envconfig:"REVERB_SERVER_PATH" desc:"path prefix for every route, e.g. /reverb (signatures are checked without it, as pusher-http-php signs)"`
	// Reverb takes its certificate from config/reverb.php's options.tls
	// (local_cert, local_pk), which no environment variable sets, so these
	// names are Resound's own.
	TLSCert string `envconfig:"RESOUND_TLS_CERT" desc:"PEM certificate (chain) file; with RESOUND_TLS_KEY the port serves wss:// and https:// instead of ws:// and http://; reloaded when the file changes"`
	TLSKey  string `envconfig:"RESOUND_TLS_KEY" desc:"PEM private key file of RESOUND_TLS_CERT"`

	NATSURL  string `envconfig:"NATS_URL" desc:"NATS server(s) with JetStream; unset, gateway embeds one and runs the workers in process"`
	AppsFile string `envconfig:"RESOUND_APPS_FILE" desc:"JSON file with several apps (see README); used with or instead of REVERB_APP_*"`
	DataDir  string `envconfig:"RESOUND_DATA_DIR" desc:"directory for the embedded NATS file store (default ./.resound/<port>)"`

	Workers     int    `envconfig:"RESOUND_WORKERS" default:"4" desc:"worker goroutines that encode and route jobs, per worker process"`
	MetricsPort int    `envconfig:"RESOUND_METRICS_PORT" default:"9091" desc:"port of the worker process's /metrics, /up and /livez (a gateway serves its /metrics on RESOUND_OPS_ADDR)"`
	LogLevel    string `envconfig:"RESOUND_LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	Pprof       bool   `envconfig:"RESOUND_PPROF" default:"false" desc:"serve Go's profiler at /debug/pprof/ on RESOUND_OPS_ADDR (never on the public port)"`
	LogFormat   string `envconfig:"RESOUND_LOG_FORMAT" default:"auto" desc:"json, console, or auto (console on a terminal, json otherwise)"`
	Reactor     string `envconfig:"RESOUND_REACTOR" default:"auto" desc:"the gateway's socket layer: auto (epoll on Linux, kqueue on macOS and the BSDs, portable elsewhere), epoll, kqueue, or portable (a goroutine per connection on net.Conn, any platform)"`

	PingInterval    Seconds `envconfig:"RESOUND_PING_INTERVAL" default:"60" desc:"seconds of client silence before the server sends pusher:ping"`
	ActivityTimeout Seconds `envconfig:"RESOUND_ACTIVITY_TIMEOUT" default:"30" desc:"activity_timeout told to clients: seconds of server silence before they ping"`
	PongTimeout     Seconds `envconfig:"RESOUND_PONG_TIMEOUT" default:"30" desc:"seconds to wait for any reply to a server ping before closing with 4201"`
	MaxMessageSize  int     `envconfig:"RESOUND_MAX_MESSAGE_SIZE" default:"10000" desc:"largest client WebSocket message in bytes; larger is closed with 1009"`
	MaxEventSize    int     `envconfig:"RESOUND_MAX_EVENT_SIZE" default:"10240" desc:"largest event data accepted by the HTTP API in bytes (413 above)"`
	MaxOutbound     int     `envconfig:"RESOUND_MAX_OUTBOUND" default:"1048576" desc:"bytes of output a client that is not reading may have waiting before it is cut off"`
	MaxRequestSize  int     `envconfig:"RESOUND_MAX_REQUEST_SIZE" default:"262144" desc:"largest HTTP API request body in bytes (413 above)"`

	CacheTTL    Seconds `envconfig:"RESOUND_CACHE_TTL" default:"1800" desc:"seconds a cache channel keeps its last event, subscribers or not"`
	DrainWindow Seconds `envconfig:"RESOUND_DRAIN_WINDOW" default:"10" desc:"seconds over which a stopping gateway spreads its clients' 4200 reconnects (SIGTERM); 0 closes them at once"`
	GatewayTTL  Seconds `envconfig:"RESOUND_GATEWAY_TTL" default:"15" desc:"seconds after its last heartbeat that a gateway counts as dead and its presence members are removed"`

	Partitions int `envconfig:"RESOUND_PARTITIONS" default:"8" desc:"ordered lanes of the job stream, shared out among worker processes; every process must use the same number"`
	Replicas   int `envconfig:"RESOUND_NATS_REPLICAS" default:"1" desc:"JetStream replicas of the job stream and the shared-state buckets: 3 on a 3-node NATS cluster survives losing a node"`

	QueueMaxBytes  int64   `envconfig:"RESOUND_QUEUE_MAX_BYTES" default:"1073741824" desc:"bytes the job stream may hold before the API answers 503"`
	QueueMaxAge    Seconds `envconfig:"RESOUND_QUEUE_MAX_AGE" default:"86400" desc:"seconds a job may wait in the stream before it is discarded"`
	JobMaxAttempts int     `envconfig:"RESOUND_JOB_MAX_ATTEMPTS" default:"10" desc:"times a worker tries a job, with backoff, before setting it aside in the dead-letter stream"`

	// Bounds on what one client, or all of them, can make a gateway hold.
	// docs/security.md lists each with the attack it stops.
	HandshakeTimeout         Seconds `envconfig:"RESOUND_HANDSHAKE_TIMEOUT" default:"10" desc:"seconds from accept to a complete request head (WebSocket upgrade or first HTTP request); then the socket is closed"`
	MaxRequestHead           int     `envconfig:"RESOUND_MAX_REQUEST_HEAD" default:"16384" desc:"bytes of request line and headers, WebSocket upgrades and HTTP API alike; over it 431, then close"`
	MaxHandshakes            int     `envconfig:"RESOUND_MAX_HANDSHAKES" default:"2048" desc:"handshakes in progress at once (waiting for their request head, for a handshake worker, or on one); past it a new socket gets 503 and is closed"`
	HandshakeWorkers         int     `envconfig:"RESOUND_HANDSHAKE_WORKERS" default:"0" desc:"goroutines that run handshakes once a socket's request head is in; 0 is four per core (GOMAXPROCS)"`
	MaxHTTPConnections       int     `envconfig:"RESOUND_MAX_HTTP_CONNECTIONS" default:"1024" desc:"plain HTTP (API) connections open at once; past it 503 and close"`
	MaxConnectionsPerIP      int     `envconfig:"RESOUND_MAX_CONNECTIONS_PER_IP" default:"0" desc:"open connections (WebSocket and HTTP) per client IP; past it 429 and close; 0 is no cap"`
	TrustedProxies           CIDRs   `envconfig:"RESOUND_TRUSTED_PROXIES" desc:"comma-separated CIDRs of load balancers whose X-Forwarded-For or PROXY header names the client"`
	ProxyProtocol            bool    `envconfig:"RESOUND_PROXY_PROTOCOL" default:"false" desc:"connections from trusted proxies start with a PROXY protocol v1 or v2 header"`
	MaxChannelsPerConnection int     `envconfig:"RESOUND_MAX_CHANNELS_PER_CONNECTION" default:"1000" desc:"channels one connection may be on; the next subscription gets pusher:subscription_error and pusher:error 4301"`
	MaxOutboundTotal         int64   `envconfig:"RESOUND_MAX_OUTBOUND_TOTAL" default:"268435456" desc:"bytes of output all slow clients of a gateway may hold at once; a write past it cuts that client off"`
	HistoryTTL               Seconds `envconfig:"RESOUND_HISTORY_TTL" default:"300" desc:"seconds deliveries are kept for gateways and resuming clients to catch up with"`
	HistoryMaxBytes          int64   `envconfig:"RESOUND_HISTORY_MAX_BYTES" default:"268435456" desc:"bytes of deliveries kept for catching up; the oldest go first"`
	Recovery                 bool    `envconfig:"RESOUND_RECOVERY" default:"false" desc:"apps that do not say otherwise let clients resume channels where they left off (events carry their position)"`

	// Webhooks (Pusher's; Reverb has none, so the names are Resound's).
	// The environment app's one receiver; apps in RESOUND_APPS_FILE list
	// theirs in soketi's shape.
	WebhookURL    string `envconfig:"RESOUND_WEBHOOK_URL" desc:"URL the environment app's webhooks are POSTed to (apps in RESOUND_APPS_FILE list their own)"`
	WebhookEvents string `envconfig:"RESOUND_WEBHOOK_EVENTS" default:"channel_occupied,channel_vacated,member_added,member_removed,client_event,cache_miss,subscription_count" desc:"comma-separated webhook events sent to RESOUND_WEBHOOK_URL"`
	// soketi batches for 50 ms by default; Pusher's batch size is not
	// documented, so 100 is Resound's.
	WebhookBatchWindow Seconds `envconfig:"RESOUND_WEBHOOK_BATCH_WINDOW" default:"50ms" desc:"how long a webhook waits for more events to send in the same request (0 sends each at once)"`
	WebhookBatchMax    int     `envconfig:"RESOUND_WEBHOOK_BATCH_MAX" default:"100" desc:"most events in one webhook request"`
	// Pusher's: channel_vacated and member_removed wait 3 s and are dropped
	// if the channel or member comes back meanwhile; failed webhooks are
	// retried with backoff for 5 minutes.
	WebhookDelay    Seconds `envconfig:"RESOUND_WEBHOOK_DELAY" default:"3" desc:"seconds channel_vacated and member_removed wait, dropped (with the occupied/added that undoes them) if the channel or member comes back meanwhile"`
	WebhookRetryFor Seconds `envconfig:"RESOUND_WEBHOOK_RETRY_FOR" default:"300" desc:"seconds a failing webhook is retried, with backoff, before it is dropped"`
	WebhookTimeout  Seconds `envconfig:"RESOUND_WEBHOOK_TIMEOUT" default:"5" desc:"seconds a receiver has to answer 2xx; longer counts as a failure and is retried"`
	WebhookMaxBytes int64   `envconfig:"RESOUND_WEBHOOK_MAX_BYTES" default:"268435456" desc:"bytes of webhooks the webhook stream may hold waiting for receivers; past it new ones are dropped and counted"`

	// The dashboard (issue 11): off unless turned on.
	Dashboard      bool   `envconfig:"RESOUND_DASHBOARD" default:"false" desc:"serve the live dashboard and debug console"`
	DashboardPath  string `envconfig:"RESOUND_DASHBOARD_PATH" default:"/dashboard" desc:"path of the dashboard"`
	DashboardAddr  string `envconfig:"RESOUND_DASHBOARD_ADDR" desc:"host:port to serve the dashboard on; empty serves it on the gateway's port under REVERB_SERVER_PATH"`
	DashboardToken string `envconfig:"RESOUND_DASHBOARD_TOKEN" desc:"token that opens the dashboard on every app; unset, an app's key and secret open it on that app alone"`
	ConsoleRate    int    `envconfig:"RESOUND_CONSOLE_RATE" default:"200" desc:"debug-console entries per second per app each process sends while someone watches; past it they are dropped and counted"`

	OpsAddr string `envconfig:"RESOUND_OPS_ADDR" desc:"host:port for /metrics and /debug/pprof/ (and /up, /livez); empty serves them nowhere, never on the public port"`
}

// CIDRs is a comma-separated list of networks ("10.0.0.0/8,192.168.1.7");
// a bare address is a network of one.
type CIDRs []netip.Prefix

// Decode implements envconfig.Decoder.
func (c *CIDRs) Decode(value string) error {
	var out CIDRs
	for _, part := range strings.Split(value, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if p, err := netip.ParsePrefix(part); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(part)
		if err != nil {
			return fmt.Errorf("%q is neither a CIDR nor an address", part)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	*c = out
	return nil
}

// Contains reports whether addr is in one of the networks.
func (c CIDRs) Contains(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range c {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Seconds is a duration written as whole seconds ("60"), as Reverb's
// settings are, or as a Go duration ("1m30s", "500ms").
type Seconds time.Duration

// Decode implements envconfig.Decoder.
func (s *Seconds) Decode(value string) error {
	d, err := parseSeconds(value)
	if err != nil {
		return err
	}
	*s = Seconds(d)
	return nil
}

// UnmarshalJSON accepts a number of seconds or a duration string.
func (s *Seconds) UnmarshalJSON(b []byte) error {
	v := strings.Trim(string(b), `"`)
	d, err := parseSeconds(v)
	if err != nil {
		return err
	}
	*s = Seconds(d)
	return nil
}

func parseSeconds(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		// NaN fails both comparisons, so it is refused too.
		if !(n >= 0 && n <= maxSeconds) {
			return 0, fmt.Errorf("must be between 0 and %d seconds", int(maxSeconds))
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is neither seconds nor a duration", v)
	}
	if d < 0 || d > maxSeconds*time.Second {
		return 0, fmt.Errorf("must be between 0 and %d seconds", int(maxSeconds))
	}
	return d, nil
}

// maxSeconds (a year) keeps every duration setting far from overflowing a
// time.Duration.
const maxSeconds = 365 * 24 * 3600

// Duration returns s as a time.Duration.
func (s Seconds) Duration() time.Duration { return time.Duration(s) }

// Config is everything a process needs: its settings and its apps.
type Config struct {
	Settings
	Apps *Apps
}

// Load reads the settings from the environment and the apps from
// REVERB_APP_* and RESOUND_APPS_FILE. An invalid setting is an error that
// names it. Having no app at all is not an error here: the all-in-one
// gateway makes a development app (see DevApp).
func Load() (*Config, error) {
	var s Settings
	if err := envconfig.Process("", &s); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("invalid setting %s=%q: %v", pe.KeyName, pe.Value, pe.Err)
		}
		return nil, fmt.Errorf("invalid settings: %w", err)
	}
	s.Path = normalizePath(s.Path)
	if err := s.validate(); err != nil {
		return nil, err
	}
	apps, err := s.loadApps()
	if err != nil {
		return nil, err
	}
	return &Config{Settings: s, Apps: apps}, nil
}

// normalizePath turns REVERB_SERVER_PATH into the prefix the routes sit
// under: "/reverb", or "" for none. Reverb hands the setting to Symfony's
// RouteCollection::addPrefix (Factory::pusherRoutes), which trims blanks and
// then slashes at both ends and puts one slash in front, so "/reverb/",
// "reverb" and "/" all start Reverb; a .env that works there starts
// Resound too (issue 12).
func normalizePath(p string) string {
	p = strings.Trim(strings.TrimSpace(p), "/")
	if p == "" {
		return ""
	}
	return "/" + p
}

func (s *Settings) validate() error {
	switch {
	case s.Port < 0 || s.Port > 65535:
		return fmt.Errorf("invalid setting REVERB_SERVER_PORT=%d: must be 0 to 65535", s.Port)
	case strings.ContainsAny(s.Path, "?# \t\r\n") || strings.Contains(s.Path, "//"):
		return fmt.Errorf("invalid setting REVERB_SERVER_PATH=%q: must be a path such as /reverb", s.Path)
	case s.Partitions < 1 || s.Partitions > 1024:
		return fmt.Errorf("invalid setting RESOUND_PARTITIONS=%d: must be 1 to 1024", s.Partitions)
	case s.Replicas < 1 || s.Replicas > 5:
		return fmt.Errorf("invalid setting RESOUND_NATS_REPLICAS=%d: must be 1 to 5", s.Replicas)
	case s.MetricsPort < 0 || s.MetricsPort > 65535:
		return fmt.Errorf("invalid setting RESOUND_METRICS_PORT=%d: must be 0 to 65535", s.MetricsPort)
	case s.Workers < 1:
		return fmt.Errorf("invalid setting RESOUND_WORKERS=%d: must be at least 1", s.Workers)
	case s.PingInterval <= 0:
		return fmt.Errorf("invalid setting RESOUND_PING_INTERVAL: must be positive")
	case s.ActivityTimeout < Seconds(time.Second):
		return fmt.Errorf("invalid setting RESOUND_ACTIVITY_TIMEOUT: must be at least 1 second (pusher-js rejects 0)")
	case s.PongTimeout <= 0:
		return fmt.Errorf("invalid setting RESOUND_PONG_TIMEOUT: must be positive")
	case s.MaxMessageSize < 1:
		return fmt.Errorf("invalid setting RESOUND_MAX_MESSAGE_SIZE=%d: must be positive", s.MaxMessageSize)
	case s.MaxOutbound < 64<<10:
		return fmt.Errorf("invalid setting RESOUND_MAX_OUTBOUND=%d: must be at least 65536", s.MaxOutbound)
	case s.MaxEventSize < 1:
		return fmt.Errorf("invalid setting RESOUND_MAX_EVENT_SIZE=%d: must be positive", s.MaxEventSize)
	case s.MaxRequestSize < s.MaxEventSize:
		return fmt.Errorf("invalid setting RESOUND_MAX_REQUEST_SIZE=%d: must be at least RESOUND_MAX_EVENT_SIZE (%d)", s.MaxRequestSize, s.MaxEventSize)
	case s.QueueMaxBytes < 1<<20:
		return fmt.Errorf("invalid setting RESOUND_QUEUE_MAX_BYTES=%d: must be at least 1 MiB", s.QueueMaxBytes)
	case s.GatewayTTL < Seconds(3*time.Second):
		return fmt.Errorf("invalid setting RESOUND_GATEWAY_TTL: must be at least 3 seconds")
	case s.CacheTTL < Seconds(time.Second):
		return fmt.Errorf("invalid setting RESOUND_CACHE_TTL: must be at least 1 second")
	case s.QueueMaxAge < Seconds(time.Second):
		return fmt.Errorf("invalid setting RESOUND_QUEUE_MAX_AGE: must be at least 1 second")
	case s.JobMaxAttempts < 1:
		return fmt.Errorf("invalid setting RESOUND_JOB_MAX_ATTEMPTS=%d: must be at least 1", s.JobMaxAttempts)
	case s.HandshakeTimeout < Seconds(time.Second):
		return fmt.Errorf("invalid setting RESOUND_HANDSHAKE_TIMEOUT: must be at least 1 second")
	case s.MaxRequestHead < 1024:
		return fmt.Errorf("invalid setting RESOUND_MAX_REQUEST_HEAD=%d: must be at least 1024", s.MaxRequestHead)
	case s.MaxHandshakes < 1:
		return fmt.Errorf("invalid setting RESOUND_MAX_HANDSHAKES=%d: must be at least 1", s.MaxHandshakes)
	case s.HandshakeWorkers < 0:
		return fmt.Errorf("invalid setting RESOUND_HANDSHAKE_WORKERS=%d: must not be negative", s.HandshakeWorkers)
	case s.MaxHTTPConnections < 1:
		return fmt.Errorf("invalid setting RESOUND_MAX_HTTP_CONNECTIONS=%d: must be at least 1", s.MaxHTTPConnections)
	case s.MaxConnectionsPerIP < 0:
		return fmt.Errorf("invalid setting RESOUND_MAX_CONNECTIONS_PER_IP=%d: must not be negative", s.MaxConnectionsPerIP)
	case s.MaxChannelsPerConnection < 1:
		return fmt.Errorf("invalid setting RESOUND_MAX_CHANNELS_PER_CONNECTION=%d: must be at least 1", s.MaxChannelsPerConnection)
	case s.HistoryTTL < Seconds(10*time.Second):
		return fmt.Errorf("invalid setting RESOUND_HISTORY_TTL: must be at least 10 seconds")
	case s.HistoryMaxBytes < 1<<20:
		return fmt.Errorf("invalid setting RESOUND_HISTORY_MAX_BYTES=%d: must be at least 1 MiB", s.HistoryMaxBytes)
	case s.MaxOutboundTotal < int64(s.MaxOutbound):
		return fmt.Errorf("invalid setting RESOUND_MAX_OUTBOUND_TOTAL=%d: must be at least RESOUND_MAX_OUTBOUND (%d)", s.MaxOutboundTotal, s.MaxOutbound)
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		return fmt.Errorf("invalid settings RESOUND_TLS_CERT=%q and RESOUND_TLS_KEY=%q: set both or neither", s.TLSCert, s.TLSKey)
	}
	switch {
	case s.WebhookBatchMax < 1:
		return fmt.Errorf("invalid setting RESOUND_WEBHOOK_BATCH_MAX=%d: must be at least 1", s.WebhookBatchMax)
	case s.WebhookTimeout < Seconds(100*time.Millisecond):
		return fmt.Errorf("invalid setting RESOUND_WEBHOOK_TIMEOUT: must be at least 100ms")
	case s.WebhookMaxBytes < 1<<20:
		return fmt.Errorf("invalid setting RESOUND_WEBHOOK_MAX_BYTES=%d: must be at least 1 MiB", s.WebhookMaxBytes)
	case s.ConsoleRate < 1:
		return fmt.Errorf("invalid setting RESOUND_CONSOLE_RATE=%d: must be at least 1", s.ConsoleRate)
	case !strings.HasPrefix(s.DashboardPath, "/") || strings.ContainsAny(s.DashboardPath, "?# \t\r\n"):
		return fmt.Errorf("invalid setting RESOUND_DASHBOARD_PATH=%q: must be a path such as /dashboard", s.DashboardPath)
	}
	if s.DashboardAddr != "" {
		if _, _, err := net.SplitHostPort(s.DashboardAddr); err != nil {
			return fmt.Errorf("invalid setting RESOUND_DASHBOARD_ADDR=%q: must be host:port", s.DashboardAddr)
		}
	}
	if s.OpsAddr != "" {
		if _, _, err := net.SplitHostPort(s.OpsAddr); err != nil {
			return fmt.Errorf("invalid setting RESOUND_OPS_ADDR=%q: must be host:port", s.OpsAddr)
		}
	}
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("invalid setting RESOUND_LOG_LEVEL=%q: must be debug, info, warn or error", s.LogLevel)
	}
	switch s.LogFormat {
	case "json", "console", "auto":
	default:
		return fmt.Errorf("invalid setting RESOUND_LOG_FORMAT=%q: must be json, console or auto", s.LogFormat)
	}
	// Whether this platform has the one named is the gateway's to say.
	switch s.Reactor {
	case "auto", "epoll", "kqueue", "portable":
	default:
		return fmt.Errorf("invalid setting RESOUND_REACTOR=%q: must be auto, epoll, kqueue or portable", s.Reactor)
	}
	return nil
}

// TLS reports whether the gateway's port serves TLS.
func (s *Settings) TLS() bool { return s.TLSCert != "" }

// ResolvedDataDir is the data directory: RESOUND_DATA_DIR, or .resound/<port>
// under the working directory, so that two instances on two ports never
// share a store.
func (s *Settings) ResolvedDataDir() (string, error) {
	if s.DataDir != "" {
		return filepath.Abs(s.DataDir)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return filepath.Join(wd, ".resound", strconv.Itoa(s.Port)), nil
}

// Usage writes the table of every setting, for --help.
func Usage(w io.Writer) error {
	var s Settings
	return envconfig.Usagef("", &s, w, usageFormat)
}

const usageFormat = `{{range .}}  {{usage_key .}}{{if usage_default .}} (default {{usage_default .}}){{end}}
      {{usage_description .}}
{{end}}`

// Limits are the protocol's limits with the event size this process
// allows.
func (s *Settings) Limits() protocol.Limits {
	lim := protocol.DefaultLimits
	lim.MaxDataBytes = s.MaxEventSize
	return lim
}

// Recovers tells whether the app's events carry positions for clients to
// resume from (false for an unknown app).
func (c *Config) Recovers(appID string) bool {
	app, ok := c.Apps.ByID(appID)
	return ok && app.Recovers()
}
