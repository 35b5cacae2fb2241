package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/pkg/cluster"
	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/pkg/metrics"
	"github.com/resoundhq/resound/pkg/route"
	"github.com/resoundhq/resound/protocol"
)

// signin handles pusher:signin: the auth must sign socket_id::user::user_data
// with the app's secret, and user_data must carry a string id.
func (s *Server) signin(c *conn, m protocol.ClientMessage) {
	d, err := protocol.ParseSigninData(m.Data)
	if err != nil {
		s.sendError(c, protocol.CodeInvalidMessage, protocol.MessageInvalidFormat)
		return
	}
	if !protocol.VerifyAuth(c.app.Key, c.app.Secret, d.Auth, protocol.UserAuthMessage(c.socketID(), d.UserData)) {
		s.sendError(c, protocol.CodeUnauthorized, "Invalid signature for pusher:signin")
		return
	}
	id, watchlist, err := protocol.ParseUserData(d.UserData)
	if err != nil {
		s.sendError(c, protocol.CodeUnauthorized, err.Error())
		return
	}
	ext := c.extension()
	if ext.userID != "" {
		if ext.userID != id {
			s.sendError(c, protocol.CodeUnauthorized, "The connection is already signed in as another user")
			return
		}
		c.write(protocol.AppendTextFrame(nil, protocol.AppendSigninSuccess(nil, d.UserData)))
		return
	}
	truncated := len(watchlist) > protocol.MaxWatchlist
	if truncated {
		watchlist = watchlist[:protocol.MaxWatchlist]
	}
	// The connection counts as signed in from now on, so that a second
	// signin is answered as one, and a close from now on signs out (on the
	// lane, after the sign-in).
	ext.userID = id
	ext.watchlist = watchlist
	app, sid := c.app, c.socketID()
	ok := s.lanes.try(c.sidA, c, func(ctx context.Context) {
		first, err := s.signInUser(ctx, app, id, sid)
		c.poller.post(func() { s.finishSignin(c, id, d.UserData, watchlist, truncated, first, err) })
	})
	if !ok {
		ext.userID, ext.watchlist = "", nil
		c.releaseExt()
		s.limitHit(metrics.LimitPendingOps, c)
		s.sendError(c, protocol.CodeUnauthorized, "Sign-in failed, try again")
	}
}

// finishSignin answers a signin once the shared state has it, on the
// poller goroutine.
func (s *Server) finishSignin(c *conn, id, userData string, watchlist []string, truncated, first bool, err error) {
	if c.destroyed || !c.isOpen() {
		return // the close's sign-out is queued after the sign-in
	}
	if errors.Is(err, errUserConnections) {
		c.ext.userID, c.ext.watchlist = "", nil
		c.releaseExt()
		s.limitHit(metrics.LimitUserConnections, c)
		s.sendError(c, protocol.CodeUnauthorized,
			fmt.Sprintf("This user has reached the limit of %d signed-in connections", c.app.MaxUserConnections))
		return
	}
	if err != nil {
		// The connection is signed in on this gateway all the same, as it
		// was before the shared state existed; only cluster-wide features
		// (terminate from another gateway, watchlists) miss it.
		s.log.Warn().Err(err).Msg("recording a signed-in user")
	}
	c.write(protocol.AppendTextFrame(nil, protocol.AppendSigninSuccess(nil, userData)))
	if truncated {
		s.sendError(c, protocol.CodeWatchlistLimit, "Watchlist limit exceeded: only the first 100 ids are watched")
	}
	app := c.app
	s.lanes.must(c.sidA, c, func(ctx context.Context) {
		if first && err == nil {
			s.publishUserState(app, id, true)
		}
		s.watch(c, watchlist)
		s.sendInitialWatchlist(ctx, c, app, watchlist)
	})
}

// signOut forgets a signed-in connection that is going away, on its lane
// after its sign-in, retrying until done.
func (s *Server) signOut(c *conn) {
	if c.ext == nil || c.ext.userID == "" {
		return
	}
	id, app, sid, watchlist := c.ext.userID, c.app, c.socketID(), c.ext.watchlist
	s.lanes.must(c.sidA, nil, func(context.Context) {
		s.unwatch(c, watchlist)
		var last bool
		s.retry("sign-out", func(ctx context.Context) (err error) {
			last, err = s.signOutUser(ctx, app, id, sid)
			return err
		})
		if last {
			s.publishUserState(app, id, false)
		}
	})
}

// errUserConnections refuses a sign-in past the app's max_user_connections.
var errUserConnections = errors.New("the user has reached the limit of signed-in connections")

func (s *Server) signInUser(ctx context.Context, app *config.App, id, sid string) (first bool, err error) {
	err = cluster.Mutate(ctx, s.opts.Stores.Users, cluster.Key(app.ID, id), func(old []byte) ([]byte, error) {
		conns := decodeSockets(old)
		if _, ok := conns[sid]; !ok && app.MaxUserConnections > 0 && len(conns) >= app.MaxUserConnections {
			return nil, errUserConnections
		}
		first = len(conns) == 0
		conns[sid] = s.opts.GatewayID
		return conns.encode(), nil
	})
	return first, err
}

func (s *Server) signOutUser(ctx context.Context, app *config.App, id, sid string) (last bool, err error) {
	err = cluster.Mutate(ctx, s.opts.Stores.Users, cluster.Key(app.ID, id), func(old []byte) ([]byte, error) {
		last = false
		conns := decodeSockets(old)
		if _, ok := conns[sid]; !ok {
			return old, nil
		}
		delete(conns, sid)
		last = len(conns) == 0
		return conns.encode(), nil
	})
	return last, err
}

// userStateSubject carries a user's online/offline transitions.
func userStateSubject(appID, userID string) string {
	return subjectUserState + route.EscapeToken(appID) + "." + route.EscapeToken(userID)
}

type userState struct {
	UserID string `json:"user_id"`
	Online bool   `json:"online"`
}

func (s *Server) publishUserState(app *config.App, userID string, online bool) {
	b, _ := json.Marshal(userState{UserID: userID, Online: online})
	if err := s.opts.Conn.Publish(userStateSubject(app.ID, userID), b); err != nil {
		s.log.Warn().Err(err).Msg("publishing user state")
	}
}

func (s *Server) watch(c *conn, ids []string) {
	if len(ids) == 0 {
		return
	}
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	for _, id := range ids {
		subj := userStateSubject(c.app.ID, id)
		e := s.watchers.byKey[subj]
		if e == nil {
			sub, err := s.opts.Conn.ChanSubscribe(subj, s.userStates)
			if err != nil {
				s.log.Warn().Err(err).Msg("watching a user")
				continue
			}
			e = &watchEntry{conns: map[*conn]struct{}{}, sub: sub}
			s.watchers.byKey[subj] = e
		}
		e.conns[c] = struct{}{}
	}
}

func (s *Server) unwatch(c *conn, ids []string) {
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	for _, id := range ids {
		subj := userStateSubject(c.app.ID, id)
		if e := s.watchers.byKey[subj]; e != nil {
			delete(e.conns, c)
			if len(e.conns) == 0 {
				_ = e.sub.Unsubscribe()
				delete(s.watchers.byKey, subj)
			}
		}
	}
}

// runUserStates forwards watched users' transitions to their watchers.
func (s *Server) runUserStates(done <-chan struct{}) {
	for {
		var m *nats.Msg
		select {
		case m = <-s.userStates:
		case <-done:
			return
		}
		s.forwardUserState(m)
	}
}

func (s *Server) forwardUserState(m *nats.Msg) {
	defer s.recoverNATS()
	var st userState
	if json.Unmarshal(m.Data, &st) != nil {
		return
	}
	name := "offline"
	if st.Online {
		name = "online"
	}
	frame := protocol.AppendTextFrame(nil, protocol.AppendWatchlistEvent(nil, name, []string{st.UserID}))
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	if e := s.watchers.byKey[m.Subject]; e != nil {
		for c := range e.conns {
			c.write(frame)
		}
	}
}

// sendInitialWatchlist tells a newly signed-in connection which of the
// users it watches are online now.
func (s *Server) sendInitialWatchlist(ctx context.Context, c *conn, app *config.App, ids []string) {
	var online []string
	for _, id := range ids {
		e, err := s.opts.Stores.Users.Get(ctx, cluster.Key(app.ID, id))
		if err != nil {
			continue
		}
		if len(decodeSockets(e.Value())) > 0 {
			online = append(online, id)
		}
	}
	if len(online) > 0 {
		c.write(protocol.AppendTextFrame(nil, protocol.AppendWatchlistEvent(nil, "online", online)))
	}
}

// sweepUsers removes signed-in connections of gateways that are gone, and
// announces the users who are offline because of it.
func (s *Server) sweepUsers(ctx context.Context, live map[string]bool) {
	lister, err := s.opts.Stores.Users.ListKeys(ctx)
	if err != nil {
		if !errors.Is(err, jetstream.ErrNoKeysFound) {
			s.log.Warn().Err(err).Msg("sweeping users")
		}
		return
	}
	for key := range lister.Keys() {
		appTok, userTok, ok := strings.Cut(key, ".")
		if !ok {
			continue
		}
		appID, err1 := cluster.ParseToken(appTok)
		userID, err2 := cluster.ParseToken(userTok)
		app, known := s.opts.Apps.ByID(appID)
		if err1 != nil || err2 != nil || !known {
			continue
		}
		last := false
		err := cluster.Mutate(ctx, s.opts.Stores.Users, key, func(old []byte) ([]byte, error) {
			conns := decodeSockets(old)
			changed := false
			for sid, gw := range conns {
				if !live[gw] {
					delete(conns, sid)
					changed = true
				}
			}
			if !changed {
				return old, nil
			}
			last = len(conns) == 0
			return conns.encode(), nil
		})
		if err == nil && last {
			s.publishUserState(app, userID, false)
		}
	}
}

// socketGateways maps a user's signed-in socket ids to their gateways.
type socketGateways map[string]string

func decodeSockets(b []byte) socketGateways {
	m := socketGateways{}
	if len(b) > 0 {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

func (m socketGateways) encode() []byte {
	if len(m) == 0 {
		return nil
	}
	b, _ := json.Marshal(m)
	return b
}
