package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/internal/users"
	"github.com/resoundhq/resound/internal/wire"
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
	if ext.signingIn {
		s.sendError(c, protocol.CodeUnauthorized, "A sign-in is already in progress")
		return
	}
	if ext.userID != "" {
		if ext.userID != id {
			s.sendError(c, protocol.CodeUnauthorized, "The connection is already signed in as another user")
			return
		}
		c.Write(protocol.AppendTextFrame(nil, protocol.AppendSigninSuccess(nil, d.UserData)))
		return
	}
	truncated := len(watchlist) > protocol.MaxWatchlist
	if truncated {
		watchlist = watchlist[:protocol.MaxWatchlist]
	}
	// The connection counts as signed in from now on, so that a second
	// signin is answered as one, and a close from now on signs out (on the
	// lane, after the sign-in).
	ext.userID, ext.signingIn = id, true
	ext.watchlist = watchlist
	app, sid := c.app, c.socketID()
	ok := s.lanes.try(c.sidA, c, func(ctx context.Context) {
		first, err := s.users.SignIn(ctx, app.ID, id, sid, s.opts.GatewayID, app.MaxUserConnections)
		c.Post(func() { s.finishSignin(c, id, d.UserData, watchlist, truncated, first, err) })
	})
	if !ok {
		ext.userID, ext.signingIn, ext.watchlist = "", false, nil
		c.releaseExt()
		s.limitHit(metrics.LimitPendingOps, c)
		s.sendError(c, protocol.CodeUnauthorized, "Sign-in failed, try again")
	}
}

// finishSignin answers a signin once the shared state has it, on the
// poller goroutine.
func (s *Server) finishSignin(c *conn, id, userData string, watchlist []string, truncated, first bool, err error) {
	if c.Destroyed() || !c.IsOpen() {
		return // the close's sign-out is queued after the sign-in
	}
	c.ext.signingIn = false
	if errors.Is(err, users.ErrUserConnections) {
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
	c.Write(protocol.AppendTextFrame(nil, protocol.AppendSigninSuccess(nil, userData)))
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
			last, err = s.users.SignOut(ctx, app.ID, id, sid)
			return err
		})
		if last {
			s.publishUserState(app, id, false)
		}
	})
}

func (s *Server) publishUserState(app *config.App, userID string, online bool) {
	s.control.publishUserState(app.ID, userID, online)
}

func (s *Server) watch(c *conn, ids []string) {
	if len(ids) == 0 {
		return
	}
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	for _, id := range ids {
		subj := userStateSubject(c.app.ID, id)
		conns := s.watchers.byKey[subj]
		if conns == nil {
			if err := s.control.watch(subj); err != nil {
				s.log.Warn().Err(err).Msg("watching a user")
				continue
			}
			conns = map[*conn]struct{}{}
			s.watchers.byKey[subj] = conns
		}
		conns[c] = struct{}{}
	}
}

func (s *Server) unwatch(c *conn, ids []string) {
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	for _, id := range ids {
		subj := userStateSubject(c.app.ID, id)
		if conns := s.watchers.byKey[subj]; conns != nil {
			delete(conns, c)
			if len(conns) == 0 {
				s.control.unwatch(subj)
				delete(s.watchers.byKey, subj)
			}
		}
	}
}

// userStateChanged forwards a watched user's transition to its watchers
// here; the control plane calls it.
func (s *Server) userStateChanged(subject string, st wire.UserState) {
	name := "offline"
	if st.Online {
		name = "online"
	}
	frame := protocol.AppendTextFrame(nil, protocol.AppendWatchlistEvent(nil, name, []string{st.UserID}))
	s.watchers.mu.Lock()
	defer s.watchers.mu.Unlock()
	for c := range s.watchers.byKey[subject] {
		c.Write(frame)
	}
}

// sendInitialWatchlist tells a newly signed-in connection which of the
// users it watches are online now.
func (s *Server) sendInitialWatchlist(ctx context.Context, c *conn, app *config.App, ids []string) {
	var online []string
	for _, id := range ids {
		if on, err := s.users.Online(ctx, app.ID, id); err == nil && on {
			online = append(online, id)
		}
	}
	if len(online) > 0 {
		c.Write(protocol.AppendTextFrame(nil, protocol.AppendWatchlistEvent(nil, "online", online)))
	}
}
