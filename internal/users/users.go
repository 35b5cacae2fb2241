// Package users keeps the users signed in (pusher:signin) where every
// gateway sees them: one key per app and user in the RESOUND_USERS bucket,
// holding the user's signed-in sockets with the gateway of each. Sign-ins
// and sign-outs are compare-and-sets on that key, so exactly one gateway
// sees a user come online (the first socket) and exactly one sees the user
// go offline (the last), and tells the user's watchers.
//
// A package of its own, as presence is, rather than part of cluster:
// cluster is the mechanism (buckets, compare-and-set, the registry of
// gateways) and knows nothing of what the values mean.
package users

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
)

// ErrUserConnections is returned when a user already has as many
// signed-in sockets as the app allows one user.
var ErrUserConnections = errors.New("users: the user has reached its signed-in connection limit")

// Store is the signed-in users of every app.
type Store struct {
	kv *cluster.Bucket
}

// New returns a store on the users bucket.
func New(kv *cluster.Bucket) *Store { return &Store{kv: kv} }

// sockets maps a user's signed-in socket ids to their gateways.
type sockets map[string]string

// decode reads a user's sockets. A value that does not parse reads as no
// sockets, so the next change rewrites it rather than the key failing
// every change for good.
func decode(b []byte) sockets {
	m := sockets{}
	if len(b) > 0 {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

func (m sockets) encode() []byte {
	if len(m) == 0 {
		return nil // delete the key
	}
	b, _ := json.Marshal(m)
	return b
}

// SignIn records a signed-in socket of a user on a gateway. first reports
// that the user had no signed-in socket before: the user is online now and
// its watchers are due an "online". maxConns bounds the user's signed-in
// sockets across the cluster (0: no bound); past it SignIn returns
// ErrUserConnections. A socket already signed in is not refused: signing
// it in again changes nothing.
func (s *Store) SignIn(ctx context.Context, app, user, socketID, gatewayID string, maxConns int) (first bool, err error) {
	err = cluster.Mutate(ctx, s.kv, cluster.Key(app, user), func(old []byte) ([]byte, error) {
		conns := decode(old)
		first = len(conns) == 0
		if gw, in := conns[socketID]; in {
			if gw == gatewayID {
				return old, nil
			}
		} else if maxConns > 0 && len(conns) >= maxConns {
			return nil, ErrUserConnections
		}
		conns[socketID] = gatewayID
		return conns.encode(), nil
	})
	if err != nil {
		first = false
	}
	return first, err
}

// SignOut forgets a signed-in socket. last reports that it was the user's
// last: the user is offline now and its watchers are due an "offline".
// Forgetting a socket that is not signed in changes nothing.
func (s *Store) SignOut(ctx context.Context, app, user, socketID string) (last bool, err error) {
	err = cluster.Mutate(ctx, s.kv, cluster.Key(app, user), func(old []byte) ([]byte, error) {
		last = false
		conns := decode(old)
		if _, ok := conns[socketID]; !ok {
			return old, nil
		}
		delete(conns, socketID)
		last = len(conns) == 0
		return conns.encode(), nil
	})
	if err != nil {
		last = false
	}
	return last, err
}

// Online reports whether a user has a signed-in socket anywhere.
func (s *Store) Online(ctx context.Context, app, user string) (bool, error) {
	e, err := s.kv.Get(ctx, cluster.Key(app, user))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return len(decode(e.Value())) > 0, nil
}

// Offline is a user whose last signed-in socket was removed by a
// clean-up.
type Offline struct {
	App, UserID string
}

// RemoveGatewaysExcept forgets every signed-in socket held by a gateway
// that is not live, and returns the users that went offline because of
// it, for the caller to announce (to the apps it still serves). It follows
// cluster.Bucket.Sweep's rule for errors: a user that fails does not stop
// the others, and the users returned are all those that went offline,
// even when the error is not nil.
func (s *Store) RemoveGatewaysExcept(ctx context.Context, live cluster.Liveness) ([]Offline, error) {
	var out []Offline
	err := s.kv.Sweep(ctx, func(ctx context.Context, key string) error {
		appTok, userTok, ok := strings.Cut(key, ".")
		if !ok {
			return nil // not a user's key
		}
		app, err1 := cluster.ParseToken(appTok)
		user, err2 := cluster.ParseToken(userTok)
		if err1 != nil || err2 != nil {
			return nil
		}
		last := false
		err := cluster.Mutate(ctx, s.kv, key, func(old []byte) ([]byte, error) {
			last = false
			conns := decode(old)
			changed := false
			for sid, gw := range conns {
				if !live.Live(gw) {
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
		if err != nil {
			return err
		}
		if last {
			out = append(out, Offline{App: app, UserID: user})
		}
		return nil
	})
	return out, err
}
