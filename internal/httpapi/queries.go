package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/protocol"
)

// The API's view of the cluster is one small interface per question it
// asks, each satisfied by the type that owns the answer where there is one,
// so that a new query is a new interface and an Options field, and nothing
// in between has to learn it.

// ChannelQuerier counts subscriptions and connections across the gateways;
// *cluster.Querier is one.
type ChannelQuerier interface {
	Query(ctx context.Context, req cluster.QueryRequest) (cluster.QueryResult, error)
}

// PresenceReader lists a presence channel's members across the cluster;
// *presence.Store is one.
type PresenceReader interface {
	Members(ctx context.Context, appID, channel string) ([]protocol.PresenceMember, error)
}

// CacheReader reads a cache channel's last event and how long it has left;
// nil with no error when nothing is cached.
type CacheReader interface {
	CachedEvent(ctx context.Context, appID, channel string) (ev *cluster.CachedEvent, ttl time.Duration, err error)
}

// Terminator closes every connection of a user of an app, on every
// gateway.
type Terminator interface {
	Terminate(ctx context.Context, appID, userID string) error
}

// TerminatorFunc makes a function a Terminator (gateway.Terminate is a
// function of a NATS connection).
type TerminatorFunc func(ctx context.Context, appID, userID string) error

// Terminate calls f.
func (f TerminatorFunc) Terminate(ctx context.Context, appID, userID string) error {
	return f(ctx, appID, userID)
}

// Channel attributes a query may ask for.
const (
	attrOccupied          = "occupied"
	attrUserCount         = "user_count"
	attrSubscriptionCount = "subscription_count"
	attrCache             = "cache"
)

// infoSet is the attributes an info parameter asks for.
//
// Where the attribute does not apply (user_count on a public channel,
// subscription_count on a presence channel, cache on a channel that is not
// a cache channel, user_count on GET /channels without a presence- filter),
// Pusher's reference answers 400. Reverb answers 200 and leaves the
// attribute out, and it ignores names it does not know
// (InteractsWithChannelInformation::info). pusher-php-server throws on any
// status but 2xx, so a Laravel app that works on Reverb would start throwing
// on Resound: we answer as Reverb does (issue 12).
type infoSet struct {
	occupied, userCount, subscriptionCount, cache bool
}

func parseInfo(info string) infoSet {
	var s infoSet
	for _, a := range strings.Split(info, ",") {
		switch strings.TrimSpace(a) {
		case attrOccupied:
			s.occupied = true
		case attrUserCount:
			s.userCount = true
		case attrSubscriptionCount:
			s.subscriptionCount = true
		case attrCache:
			s.cache = true
		}
	}
	return s
}

func isPresence(ch string) bool {
	return protocol.ClassifyChannel(ch).Auth == protocol.AuthPresence
}

// attrsOf computes the attributes in want that apply to channel, which has
// subs subscriptions across the cluster.
func (a *API) attrsOf(ctx context.Context, appID, channel string, subs int, want infoSet) (map[string]any, error) {
	out := map[string]any{}
	if want.occupied {
		out[attrOccupied] = subs > 0
	}
	if want.userCount && isPresence(channel) {
		members, err := a.opts.Presence.Members(ctx, appID, channel)
		if err != nil {
			return nil, err
		}
		out[attrUserCount] = len(members)
	}
	if want.subscriptionCount && !isPresence(channel) {
		out[attrSubscriptionCount] = subs
	}
	if want.cache && protocol.ClassifyChannel(channel).Cache {
		ev, ttl, err := a.opts.Cache.CachedEvent(ctx, appID, channel)
		if err != nil {
			return nil, err
		}
		// Pusher's shape, {data, ttl} (plus the event's name); Reverb
		// answers the raw cached payload. Nothing cached: left out.
		if ev != nil {
			out[attrCache] = map[string]any{"event": ev.Event, "data": ev.Data, "ttl": int(ttl / time.Second)}
		}
	}
	return out, nil
}

func (a *API) queryCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 5*time.Second)
}

// channels answers GET /apps/{app_id}/channels: the occupied channels,
// with the attributes of info that apply to each.
func (a *API) channels(w http.ResponseWriter, r *http.Request, req *request) {
	app := req.app
	q := r.URL.Query()
	want := parseInfo(q.Get("info"))
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	res, err := a.opts.Channels.Query(ctx, cluster.QueryRequest{App: app.ID, Prefix: q.Get("filter_by_prefix")})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	out := map[string]map[string]any{}
	for ch, n := range res.Channels {
		if out[ch], err = a.attrsOf(ctx, app.ID, ch, n, want); err != nil {
			a.unavailable(w, err)
			return
		}
	}
	writeValue(w, http.StatusOK, map[string]any{"channels": out})
}

// channel answers GET /apps/{app_id}/channels/{channel_name}: occupied
// always (as in Pusher and Reverb), and the attributes of info that apply.
func (a *API) channel(w http.ResponseWriter, r *http.Request, req *request) {
	app, name := req.app, r.PathValue("channel_name")
	if !protocol.ValidChannelName(name) {
		writeError(w, http.StatusBadRequest, "Invalid channel name.")
		return
	}
	want := parseInfo(r.URL.Query().Get("info"))
	want.occupied = true
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	res, err := a.opts.Channels.Query(ctx, cluster.QueryRequest{App: app.ID, Channel: name})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	out, err := a.attrsOf(ctx, app.ID, name, res.Channels[name], want)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	writeValue(w, http.StatusOK, out)
}

// users answers GET /apps/{app_id}/channels/{channel_name}/users.
func (a *API) users(w http.ResponseWriter, r *http.Request, req *request) {
	app, name := req.app, r.PathValue("channel_name")
	if !isPresence(name) {
		writeError(w, http.StatusBadRequest, "Users are only available for presence channels.")
		return
	}
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	members, err := a.opts.Presence.Members(ctx, app.ID, name)
	if err != nil {
		a.unavailable(w, err)
		return
	}
	type user struct {
		ID string `json:"id"`
	}
	out := make([]user, 0, len(members))
	for _, m := range members {
		out = append(out, user{ID: m.ID})
	}
	writeValue(w, http.StatusOK, map[string]any{"users": out})
}

// connections answers GET /apps/{app_id}/connections, Reverb's count of
// connections subscribed to at least one channel (Laravel Pulse reads it).
func (a *API) connections(w http.ResponseWriter, r *http.Request, req *request) {
	app := req.app
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	res, err := a.opts.Channels.Query(ctx, cluster.QueryRequest{App: app.ID, ConnectionsOnly: true})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	writeValue(w, http.StatusOK, map[string]int{"connections": res.Connections})
}

// terminate answers POST /apps/{app_id}/users/{user_id}/terminate_connections.
func (a *API) terminate(w http.ResponseWriter, r *http.Request, req *request) {
	app, userID := req.app, r.PathValue("user_id")
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	if err := a.opts.Terminator.Terminate(ctx, app.ID, userID); err != nil {
		a.unavailable(w, err)
		return
	}
	writeJSON(w, http.StatusOK, `{}`)
}

// eventInfo computes the attributes a trigger's info asked for. cache is
// left out: the worker writes the cache after the job is stored, so the
// answer would race it.
func (a *API) eventInfo(ctx context.Context, app *config.App, t protocol.Trigger) (map[string]map[string]any, error) {
	want := parseInfo(t.Info)
	want.cache = false
	out := map[string]map[string]any{}
	for _, ch := range t.Channels {
		subs := 0
		if want.occupied || (want.subscriptionCount && !isPresence(ch)) {
			res, err := a.opts.Channels.Query(ctx, cluster.QueryRequest{App: app.ID, Channel: ch})
			if err != nil {
				return nil, err
			}
			subs = res.Channels[ch]
		}
		vals, err := a.attrsOf(ctx, app.ID, ch, subs, want)
		if err != nil {
			return nil, err
		}
		out[ch] = vals
	}
	return out, nil
}

func (a *API) unavailable(w http.ResponseWriter, err error) {
	a.opts.Log.Error().Err(err).Msg("cluster query")
	writeError(w, http.StatusServiceUnavailable, "The cluster state is not available; try again.")
}

func writeValue(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	writeJSON(w, status, string(b))
}
