// Package presence keeps the members of presence channels where every
// gateway sees them: one key per channel in the RESOUND_PRESENCE bucket,
// holding each user's info and the connections (with their gateway) that
// user has on the channel. Joins and leaves are compare-and-sets on that
// key, so exactly one gateway sees a user's first connection arrive (and
// sends member_added) and exactly one sees the last one go (and sends
// member_removed), however many gateways the user's tabs are spread over.
package presence

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/protocol"
)

// ErrFull is returned when a new user would pass the channel's member
// limit.
var ErrFull = errors.New("presence: the channel has reached its member limit")

// ErrUserConnections is returned when a user already has as many
// connections on the channel as the app allows one user.
var ErrUserConnections = errors.New("presence: the user has reached its connection limit on the channel")

// DefaultMaxUserConnections is the app setting max_user_connections'
// default, the bound Join applies.
const DefaultMaxUserConnections = 100

// Store is the presence state of every app and channel.
type Store struct {
	kv *cluster.Bucket
}

// New returns a store on the presence bucket.
func New(kv *cluster.Bucket) *Store { return &Store{kv: kv} }

type state struct {
	Members map[string]*member `json:"m"`
}

type member struct {
	Info json.RawMessage `json:"i,omitempty"`
	// Conns maps socket ids to the gateway holding them.
	Conns map[string]string `json:"c"`
}

// decode reads a channel's members. A value that does not parse (written
// by hand, or by a release that wrote another shape) reads as no members,
// as the users and counts stores read theirs: the next join rewrites it,
// where an error would fail every join and leave of the channel for good,
// and keep a gateway's leave retrying without end.
func decode(b []byte) (*state, error) {
	st := &state{Members: map[string]*member{}}
	if len(b) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(b, st); err != nil {
		return &state{Members: map[string]*member{}}, nil
	}
	if st.Members == nil {
		st.Members = map[string]*member{}
	}
	for id, m := range st.Members {
		if m == nil || m.Conns == nil {
			delete(st.Members, id)
		}
	}
	return st, nil
}

func (st *state) encode() []byte {
	if len(st.Members) == 0 {
		return nil // delete the key
	}
	b, _ := json.Marshal(st)
	return b
}

func (st *state) snapshot() []protocol.PresenceMember {
	out := make([]protocol.PresenceMember, 0, len(st.Members))
	for id, m := range st.Members {
		out = append(out, protocol.PresenceMember{ID: id, Info: m.Info})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// JoinResult is what a join saw.
type JoinResult struct {
	// Members are the channel's members after the join, this user
	// included.
	Members []protocol.PresenceMember
	// First is true when this was the user's first connection on the
	// channel: member_added is due.
	First bool
	// Revision is the channel key's revision after the join. Member events
	// carry the revision of their change, so that a subscriber drops those
	// its snapshot already reflects.
	Revision uint64
}

// Limits bound what joins may add to a channel; 0 is no bound.
type Limits struct {
	// Members bounds the distinct users (the app's max_presence_members).
	Members int
	// UserConnections bounds one user's connections on the channel (the
	// app's max_user_connections), so that one user opening sockets
	// without end cannot grow the channel's key, which every join and
	// leave of every member reads and rewrites whole.
	UserConnections int
}

// Join adds a connection of a user within maxMembers distinct users and
// DefaultMaxUserConnections connections of one user. It is JoinLimited
// for callers that do not yet pass the app's max_user_connections.
func (s *Store) Join(ctx context.Context, app, channel string, m protocol.PresenceMember, socketID, gatewayID string, maxMembers int) (JoinResult, error) {
	return s.JoinLimited(ctx, app, channel, m, socketID, gatewayID, Limits{Members: maxMembers, UserConnections: DefaultMaxUserConnections})
}

// JoinLimited adds a connection of a user. A new user past lim.Members
// gets ErrFull; a user present may add connections up to
// lim.UserConnections, then gets ErrUserConnections. A connection already
// in is not refused: joining it again changes nothing. Leaving is never
// bounded, so a user at the bound still leaves normally.
func (s *Store) JoinLimited(ctx context.Context, app, channel string, m protocol.PresenceMember, socketID, gatewayID string, lim Limits) (JoinResult, error) {
	var res JoinResult
	rev, err := cluster.MutateRev(ctx, s.kv, cluster.Key(app, channel), func(old []byte) ([]byte, error) {
		st, err := decode(old)
		if err != nil {
			return nil, err
		}
		cur, ok := st.Members[m.ID]
		res.First = !ok
		if !ok {
			if lim.Members > 0 && len(st.Members) >= lim.Members {
				return nil, ErrFull
			}
			cur = &member{Info: m.Info, Conns: map[string]string{}}
			st.Members[m.ID] = cur
		}
		if _, in := cur.Conns[socketID]; !in && lim.UserConnections > 0 && len(cur.Conns) >= lim.UserConnections {
			return nil, ErrUserConnections
		}
		cur.Conns[socketID] = gatewayID
		res.Members = st.snapshot()
		return st.encode(), nil
	})
	res.Revision = rev
	return res, err
}

// Leave removes a connection. last reports that it was the user's last
// connection on the channel: member_removed is due. rev is the key's
// revision after the change (0 when the channel emptied).
func (s *Store) Leave(ctx context.Context, app, channel, userID, socketID string) (last bool, rev uint64, err error) {
	l, err := s.LeaveOrdered(ctx, app, channel, userID, socketID)
	return l.Last, l.Revision, err
}

// Left is what a leave did.
type Left struct {
	// Last: it was the user's last connection on the channel.
	Last bool
	// Revision is Leave's rev: the key's revision after the change, 0
	// when the channel emptied. member_removed frames carry it.
	Revision uint64
	// Order places the change among the key's changes even when it
	// emptied the channel (cluster.Revs.Order): member_removed webhook
	// records carry it, so that they sort after the member_added they
	// undo and before the next one, whichever gateway recorded them.
	Order uint64
}

// LeaveOrdered is Leave, with the change's place among the key's
// changes.
func (s *Store) LeaveOrdered(ctx context.Context, app, channel, userID, socketID string) (Left, error) {
	var last bool
	revs, err := cluster.MutateRevs(ctx, s.kv, cluster.Key(app, channel), func(old []byte) ([]byte, error) {
		last = false
		if old == nil {
			return nil, nil
		}
		st, err := decode(old)
		if err != nil {
			return nil, err
		}
		cur, ok := st.Members[userID]
		if !ok {
			return old, nil
		}
		if _, ok := cur.Conns[socketID]; !ok {
			return old, nil
		}
		delete(cur.Conns, socketID)
		if len(cur.Conns) == 0 {
			delete(st.Members, userID)
			last = true
		}
		return st.encode(), nil
	})
	if err != nil {
		return Left{}, err
	}
	return Left{Last: last, Revision: revs.Written, Order: revs.Order()}, nil
}

// Members lists a channel's members, sorted by id.
func (s *Store) Members(ctx context.Context, app, channel string) ([]protocol.PresenceMember, error) {
	e, err := s.kv.Get(ctx, cluster.Key(app, channel))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st, err := decode(e.Value())
	if err != nil {
		return nil, err
	}
	return st.snapshot(), nil
}

// Channels lists the occupied presence channels of an app with their
// member counts.
func (s *Store) Channels(ctx context.Context, app string) (map[string]int, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, cluster.Token(app)+".*")
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for k := range lister.Keys() {
		_, chTok, ok := strings.Cut(k, ".")
		if !ok {
			continue
		}
		ch, err := cluster.ParseToken(chTok)
		if err != nil {
			continue
		}
		members, err := s.Members(ctx, app, ch)
		if err != nil {
			return nil, err
		}
		if len(members) > 0 {
			out[ch] = len(members)
		}
	}
	return out, nil
}

// Removed is a user whose last connection was removed by a clean-up.
type Removed struct {
	App, Channel, UserID string
	// Order places the removal among the channel key's changes
	// (cluster.Revs.Order), as Left.Order does.
	Order uint64
}

// RemoveGatewaysExcept removes every connection held by a gateway that is
// not live, and returns the users that left a channel because of it, for
// the caller to announce. It follows cluster.Bucket.Sweep's rule for
// errors: a channel that fails does not stop the others, and the users
// returned are all those removed, even when the error is not nil.
func (s *Store) RemoveGatewaysExcept(ctx context.Context, live cluster.Liveness) ([]Removed, error) {
	var out []Removed
	err := s.kv.Sweep(ctx, func(ctx context.Context, k string) error {
		appTok, chTok, ok := strings.Cut(k, ".")
		if !ok {
			return nil // not a channel's key
		}
		app, err1 := cluster.ParseToken(appTok)
		ch, err2 := cluster.ParseToken(chTok)
		if err1 != nil || err2 != nil {
			return nil
		}
		var gone []string
		revs, err := cluster.MutateRevs(ctx, s.kv, k, func(old []byte) ([]byte, error) {
			gone = gone[:0]
			if old == nil {
				return nil, nil
			}
			st, err := decode(old)
			if err != nil {
				return nil, err
			}
			changed := false
			for id, m := range st.Members {
				for sid, gw := range m.Conns {
					if !live.Live(gw) {
						delete(m.Conns, sid)
						changed = true
					}
				}
				if len(m.Conns) == 0 {
					delete(st.Members, id)
					gone = append(gone, id)
				}
			}
			if !changed {
				return old, nil
			}
			return st.encode(), nil
		})
		if err != nil {
			return err
		}
		for _, id := range gone {
			out = append(out, Removed{App: app, Channel: ch, UserID: id, Order: revs.Order()})
		}
		return nil
	})
	return out, err
}
