package dashboard

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"mime"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/resoundhq/resound/internal/config"
)

// Sessions are stateless: the cookie carries what the session may see and
// until when, signed with HMAC-SHA256. So any gateway of the cluster
// accepts a cookie another one made, and nothing is kept per session.
// The price: logging out forgets the cookie in the browser, it cannot
// revoke a copy; changing the token or an app's secret revokes them all.

// cookieName is the session cookie's name.
const cookieName = "resound_dashboard"

// session is what a cookie grants.
type session struct {
	// All: the token opened every app, those added later included.
	All bool `json:"all,omitempty"`
	// Apps are the app ids a key and secret opened.
	Apps []string `json:"apps,omitempty"`
	// Exp is when the session ends (unix seconds).
	Exp int64 `json:"exp"`
}

func (s session) allows(app string) bool { return s.All || slices.Contains(s.Apps, app) }

// sessionKey derives the cookies' signing key from everything that opens
// the dashboard, so that it is the same on every gateway configured alike
// and changes when any of it does.
func sessionKey(token string, apps *config.Apps) []byte {
	mac := hmac.New(sha256.New, []byte("resound dashboard session v1"))
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		mac.Write(n[:])
		mac.Write([]byte(s))
	}
	field(token)
	all := slices.Clone(apps.All())
	slices.SortFunc(all, func(a, b *config.App) int { return strings.Compare(a.ID, b.ID) })
	for _, app := range all {
		field(app.ID)
		field(app.Key)
		field(app.Secret)
	}
	return mac.Sum(nil)
}

func (d *Dashboard) sign(payload []byte) []byte {
	mac := hmac.New(sha256.New, d.key)
	mac.Write(payload)
	return mac.Sum(nil)
}

// cookieValue is base64url(JSON) "." base64url(HMAC).
func (d *Dashboard) cookieValue(s session) string {
	payload, _ := json.Marshal(s)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(d.sign(payload))
}

// session is the request's valid session, if it has one.
func (d *Dashboard) session(r *http.Request) (session, bool) {
	ck, err := r.Cookie(cookieName)
	if err != nil {
		return session{}, false
	}
	p, m, ok := strings.Cut(ck.Value, ".")
	if !ok {
		return session{}, false
	}
	enc := base64.RawURLEncoding
	payload, err1 := enc.DecodeString(p)
	mac, err2 := enc.DecodeString(m)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, d.sign(payload)) {
		return session{}, false
	}
	var s session
	if json.Unmarshal(payload, &s) != nil || d.opts.Now().Unix() >= s.Exp {
		return session{}, false
	}
	return s, true
}

// credentials are a login's body: the token, or an app's key and secret.
type credentials struct {
	Token     string `json:"token"`
	AppKey    string `json:"app_key"`
	AppSecret string `json:"app_secret"`
}

// maxLoginBody bounds a login's body.
const maxLoginBody = 4 << 10

func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	// The rate limit is per client address and counts failures: a wrong
	// guess costs a token, a right one gives its token back. Checked
	// before anything else, so that a guesser over the limit learns
	// nothing, not even whether its guess was right.
	addr := clientAddr(r, d.opts.TrustedProxies)
	if !d.logins.take(addr) {
		w.Header().Set("Retry-After", "60")
		writeError(w, http.StatusTooManyRequests, "Too many failed logins; try again later.")
		return
	}
	// JSON only: a cross-site form cannot send it without a preflight.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		d.logins.refund(addr)
		writeError(w, http.StatusUnsupportedMediaType, "Send the credentials as JSON.")
		return
	}
	var c credentials
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxLoginBody))
	if err := dec.Decode(&c); err != nil {
		d.logins.refund(addr)
		writeError(w, http.StatusBadRequest, "Send {\"token\":…} or {\"app_key\":…,\"app_secret\":…}.")
		return
	}
	s, ok := d.authenticate(c)
	if !ok {
		d.failLog.Warn().Str("client", addr.String()).Msg("dashboard: failed login (logged at most every 10 s)")
		writeError(w, http.StatusUnauthorized, "Wrong token, or wrong app key and secret.")
		return
	}
	d.logins.refund(addr)
	s.Exp = d.opts.Now().Add(sessionTTL).Unix()
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: d.cookieValue(s), Path: d.cookiePath(),
		MaxAge: int(sessionTTL / time.Second), HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: d.opts.Secure || r.TLS != nil,
	})
	writeValue(w, http.StatusOK, map[string]any{"apps": d.appsOf(s)})
}

// authenticate checks credentials: the token opens every app, an app's
// key and secret that app alone. Secrets are compared in constant time,
// as hashes so that their lengths do not show either; keys are public.
func (d *Dashboard) authenticate(c credentials) (session, bool) {
	switch {
	case c.Token != "":
		if d.opts.Token != "" && equalSecret(c.Token, d.opts.Token) {
			return session{All: true}, true
		}
	case c.AppKey != "":
		app, ok := d.opts.Apps.ByKey(c.AppKey)
		// Compared even for an unknown key, so that the answer takes as
		// long either way.
		secret := ""
		if ok {
			secret = app.Secret
		}
		if equalSecret(c.AppSecret, secret) && ok {
			return session{Apps: []string{app.ID}}, true
		}
	}
	return session{}, false
}

func equalSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1 && b != ""
}

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: "", Path: d.cookiePath(), MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: d.opts.Secure || r.TLS != nil,
	})
	writeValue(w, http.StatusOK, struct{}{})
}

// cookiePath keeps the cookie to the dashboard's own requests.
func (d *Dashboard) cookiePath() string {
	if d.path == "" {
		return "/"
	}
	return d.path
}

// clientAddr is the request's client: the peer, or, from a trusted proxy,
// the rightmost X-Forwarded-For address that is not itself a trusted
// proxy (each proxy appends the address it got the request from; only
// the trusted ones' appends can be believed).
func clientAddr(r *http.Request, trusted config.CIDRs) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap()
	if !trusted.Contains(addr) {
		return addr
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		if a = a.Unmap(); !trusted.Contains(a) {
			return a
		}
	}
	return addr
}

// limiter is a token bucket per client address: burst tokens, one back
// per every.
type limiter struct {
	burst float64
	every time.Duration
	now   func() time.Time
	mu    sync.Mutex
	by    map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// maxLimited bounds the addresses the limiter keeps. Past it, the buckets
// that are full again are forgotten; if none is, the newcomers share one
// bucket, so a flood of addresses slows their own logins, not memory.
const maxLimited = 10000

func newLimiter(burst int, every time.Duration, now func() time.Time) *limiter {
	return &limiter{burst: float64(burst), every: every, now: now, by: map[netip.Addr]*bucket{}}
}

func (l *limiter) fill(b *bucket, now time.Time) {
	b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
	b.at = now
}

// take spends a token of addr, or reports false when it has none.
func (l *limiter) take(addr netip.Addr) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.by[addr]
	if b == nil {
		if len(l.by) >= maxLimited {
			for a, o := range l.by {
				if l.fill(o, now); o.tokens >= l.burst {
					delete(l.by, a)
				}
			}
		}
		if len(l.by) >= maxLimited {
			addr = netip.Addr{}
			b = l.by[addr]
		}
		if b == nil {
			b = &bucket{tokens: l.burst, at: now}
			l.by[addr] = b
		}
	}
	l.fill(b, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// refund gives back the token of an attempt that was no guess.
func (l *limiter) refund(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.by[addr]; b != nil {
		b.tokens = min(l.burst, b.tokens+1)
	}
}
