package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/resoundhq/resound/pkg/cluster"
	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/protocol"
)

// Cluster answers the queries about the whole cluster, not one gateway.
type Cluster interface {
	Query(ctx context.Context, req cluster.QueryRequest) (cluster.QueryResult, error)
	PresenceMembers(ctx context.Context, appID, channel string) ([]protocol.PresenceMember, error)
	CachedEvent(ctx context.Context, appID, channel string) (ev *cluster.CachedEvent, ttl time.Duration, err error)
	Terminate(ctx context.Context, appID, userID string) error
}

// Channel attributes a query may ask for.
const (
	attrUserCount         = "user_count"
	attrSubscriptionCount = "subscription_count"
	attrCache             = "cache"
)

func parseInfo(info string) []string {
	if info == "" {
		return nil
	}
	var out []string
	for _, a := range strings.Split(info, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func isPresence(ch string) bool {
	return protocol.ClassifyChannel(ch).Auth == protocol.AuthPresence
}

// checkAttrs refuses attributes that don't apply to a channel, as Pusher
// does (Reverb silently leaves them out).
func checkAttrs(attrs []string, channel string, allowCache bool) error {
	for _, a := range attrs {
		switch a {
		case attrUserCount:
			if !isPresence(channel) {
				return apiError("user_count is only available for presence channels.")
			}
		case attrSubscriptionCount:
			if isPresence(channel) {
				return apiError("subscription_count is not available for presence channels; use user_count.")
			}
		case attrCache:
			if !allowCache || !protocol.ClassifyChannel(channel).Cache {
				return apiError("cache is only available for cache channels.")
			}
		default:
			return apiError("Unknown info attribute " + a + ".")
		}
	}
	return nil
}

func (a *API) queryCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 5*time.Second)
}

// channels answers GET /apps/{id}/channels.
func (a *API) channels(w http.ResponseWriter, r *http.Request, app *config.App) {
	q := r.URL.Query()
	prefix := q.Get("filter_by_prefix")
	attrs := parseInfo(q.Get("info"))
	for _, at := range attrs {
		switch at {
		case attrUserCount:
			if !strings.HasPrefix(prefix, protocol.PrefixPresence) {
				writeError(w, http.StatusBadRequest, "info=user_count requires filter_by_prefix=presence-.")
				return
			}
		case attrSubscriptionCount:
		default:
			writeError(w, http.StatusBadRequest, "Unknown info attribute "+at+".")
			return
		}
	}
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	res, err := a.opts.Cluster.Query(ctx, cluster.QueryRequest{App: app.ID, Prefix: prefix})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	out := map[string]map[string]int{}
	for ch, n := range res.Channels {
		attrsOut := map[string]int{}
		for _, at := range attrs {
			switch {
			case at == attrUserCount && isPresence(ch):
				members, err := a.opts.Cluster.PresenceMembers(ctx, app.ID, ch)
				if err != nil {
					a.unavailable(w, err)
					return
				}
				attrsOut[attrUserCount] = len(members)
			case at == attrSubscriptionCount && !isPresence(ch):
				attrsOut[attrSubscriptionCount] = n
			}
		}
		out[ch] = attrsOut
	}
	writeValue(w, http.StatusOK, map[string]any{"channels": out})
}

// channel answers GET /apps/{id}/channels/{channel}.
func (a *API) channel(w http.ResponseWriter, r *http.Request, app *config.App, name string) {
	if !protocol.ValidChannelName(name) {
		writeError(w, http.StatusBadRequest, "Invalid channel name.")
		return
	}
	attrs := parseInfo(r.URL.Query().Get("info"))
	if err := checkAttrs(attrs, name, true); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	res, err := a.opts.Cluster.Query(ctx, cluster.QueryRequest{App: app.ID, Channel: name})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	subs := res.Channels[name]
	out := map[string]any{"occupied": subs > 0}
	for _, at := range attrs {
		switch at {
		case attrUserCount:
			members, err := a.opts.Cluster.PresenceMembers(ctx, app.ID, name)
			if err != nil {
				a.unavailable(w, err)
				return
			}
			out[attrUserCount] = len(members)
		case attrSubscriptionCount:
			out[attrSubscriptionCount] = subs
		case attrCache:
			ev, ttl, err := a.opts.Cluster.CachedEvent(ctx, app.ID, name)
			if err != nil {
				a.unavailable(w, err)
				return
			}
			if ev != nil {
				out[attrCache] = map[string]any{"event": ev.Event, "data": ev.Data, "ttl": int(ttl / time.Second)}
			}
		}
	}
	writeValue(w, http.StatusOK, out)
}

// users answers GET /apps/{id}/channels/{channel}/users.
func (a *API) users(w http.ResponseWriter, r *http.Request, app *config.App, name string) {
	if !isPresence(name) {
		writeError(w, http.StatusBadRequest, "Users are only available for presence channels.")
		return
	}
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	members, err := a.opts.Cluster.PresenceMembers(ctx, app.ID, name)
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

// connections answers GET /apps/{id}/connections, Reverb's count of
// connections subscribed to at least one channel (Laravel Pulse reads it).
func (a *API) connections(w http.ResponseWriter, r *http.Request, app *config.App) {
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	res, err := a.opts.Cluster.Query(ctx, cluster.QueryRequest{App: app.ID, ConnectionsOnly: true})
	if err != nil {
		a.unavailable(w, err)
		return
	}
	writeValue(w, http.StatusOK, map[string]int{"connections": res.Connections})
}

// terminate answers POST /apps/{id}/users/{user_id}/terminate_connections.
func (a *API) terminate(w http.ResponseWriter, r *http.Request, app *config.App, userID string) {
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	if err := a.opts.Cluster.Terminate(ctx, app.ID, userID); err != nil {
		a.unavailable(w, err)
		return
	}
	writeJSON(w, http.StatusOK, `{}`)
}

// eventInfo computes the attributes a trigger's info asked for.
func (a *API) eventInfo(ctx context.Context, app *config.App, t protocol.Trigger) (map[string]map[string]int, error) {
	attrs := parseInfo(t.Info)
	out := map[string]map[string]int{}
	for _, ch := range t.Channels {
		vals := map[string]int{}
		for _, at := range attrs {
			switch {
			case at == attrUserCount && isPresence(ch):
				members, err := a.opts.Cluster.PresenceMembers(ctx, app.ID, ch)
				if err != nil {
					return nil, err
				}
				vals[attrUserCount] = len(members)
			case at == attrSubscriptionCount && !isPresence(ch):
				res, err := a.opts.Cluster.Query(ctx, cluster.QueryRequest{App: app.ID, Channel: ch})
				if err != nil {
					return nil, err
				}
				vals[attrSubscriptionCount] = res.Channels[ch]
			}
		}
		out[ch] = vals
	}
	return out, nil
}

func validInfo(t protocol.Trigger) error {
	for _, at := range parseInfo(t.Info) {
		if at != attrUserCount && at != attrSubscriptionCount {
			return apiError("Unknown info attribute " + at + "; use user_count or subscription_count.")
		}
	}
	return nil
}

func (a *API) unavailable(w http.ResponseWriter, err error) {
	a.opts.Log.Error().Err(err).Msg("cluster query")
	writeError(w, http.StatusServiceUnavailable, "The cluster state is not available; try again.")
}

func writeValue(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	writeJSON(w, status, string(b))
}
