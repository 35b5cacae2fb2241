// Package history keeps the deliveries of the last few minutes where a
// gateway can read them again: the RESOUND_HISTORY stream captures every
// message workers publish on resound.deliver.> (with core NATS, as ever:
// the stream costs the publishers nothing). A gateway that lost its link
// to NATS, or was cut off as a slow consumer, reads what it missed from
// here; so does a client resuming a channel where it left off.
//
// A delivery's position (route.Envelope.ID: the job's sequence and the
// event's index in it) grows along a channel, so readers skip what a
// subscriber already had by position. The stream's own sequence orders
// all channels together; a gateway remembers it as a mark to read from.
package history

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/wire"
)

// StreamName is the history stream's name.
const StreamName = "RESOUND_HISTORY"

// Options size the window.
type Options struct {
	// MaxAge is how long deliveries are kept.
	MaxAge time.Duration
	// MaxBytes bounds what they take; the oldest go first.
	MaxBytes int64
	Replicas int
}

// ErrExpired is returned when what was asked for is older than the
// window: some of it is gone, and the reader must start afresh.
var ErrExpired = errors.New("history: older than the window")

// Ensure creates the history stream, or brings it up to opts.
//
// File storage: each delivery is written once, to the page cache (the
// NATS server syncs its file store in the background), and the window
// outlives a restart of the NATS server. A memory stream would be gone
// with it, definition and all, and every gateway that came back would
// have to tell all its clients to reconnect, since nothing could prove
// what they missed.
func Ensure(ctx context.Context, js jetstream.JetStream, opts Options) (*History, error) {
	h := &History{js: js, opts: opts}
	if err := h.ensure(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

func (h *History) ensure(ctx context.Context) error {
	opts := h.opts
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	s, err := queue.CreateOrUpdate(ctx, h.js, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Resound deliveries of the last minutes, for gateways and clients to catch up",
		Subjects:    []string{route.DeliverPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxAge:      opts.MaxAge,
		MaxBytes:    opts.MaxBytes,
		Replicas:    opts.Replicas,
		// Deliveries are not deduplicated by message id: gateways drop
		// repeats by position.
		Duplicates: 0,
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.stream = s
	h.mu.Unlock()
	return nil
}

// History reads the history stream.
type History struct {
	js   jetstream.JetStream
	opts Options
	mu   sync.Mutex
	// stream is the stream's handle, replaced when the stream is made
	// again.
	stream jetstream.Stream
}

func (h *History) handle() jetstream.Stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stream
}

// barrierSubject is in the stream's subjects but no channel's: a
// delivery subject has four tokens.
const barrierSubject = wire.DeliverBarrier

// Barrier stores a marker in the stream and returns its sequence. A
// delivery the server took before the marker is stored before it: the
// stream takes what its subjects capture in the order the server
// processes it, a moment later. So a reader that must see everything
// published up to now reads through the barrier, not the stream's last
// sequence, which can trail what was just published.
func (h *History) Barrier(ctx context.Context) (uint64, error) {
	ack, err := h.js.Publish(ctx, barrierSubject, nil)
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		// The stream is gone (an operator removed it, or NATS came back
		// without it): make it again, so that it keeps what follows.
		if err := h.ensure(ctx); err != nil {
			return 0, err
		}
		ack, err = h.js.Publish(ctx, barrierSubject, nil)
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// Mark returns the stream's last sequence: a delivery stored after the
// call has a greater one.
func (h *History) Mark(ctx context.Context) (uint64, error) {
	info, err := h.handle().Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// fetchBatch is how many messages a replay asks for at a time.
const fetchBatch = 256

// Since replays, oldest first, the deliveries stored after mark and up
// to through (0: those stored when it began) on the given subjects (nil:
// all), handing each to f with its sequence in the stream. It returns
// ErrExpired, before replaying anything, when some deliveries after mark
// are gone already.
func (h *History) Since(ctx context.Context, mark, through uint64, subjects []string, f func(subject string, data []byte, seq uint64) error) error {
	info, err := h.handle().Info(ctx)
	if err != nil {
		return err
	}
	st := info.State
	if through == 0 || through > st.LastSeq {
		through = st.LastSeq
	}
	switch {
	case mark > st.LastSeq:
		return ErrExpired // the stream started over (a NATS restart): what followed mark is gone
	case mark >= through:
		return nil
	case st.Msgs > 0 && mark+1 < st.FirstSeq:
		return ErrExpired
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects,
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    mark + 1,
	}
	return h.replay(ctx, cfg, through, func(m jetstream.Msg, seq uint64) error { return f(m.Subject(), m.Data(), seq) })
}

// After replays one channel's deliveries that follow the one at position
// pos, oldest first, handing each to f. The delivery at pos must still be
// in the window, else nothing can prove that none after it is gone, and
// After returns ErrExpired. Deliveries of one channel are stored in the
// order of their positions, and the window drops the oldest first, so
// with the one at pos kept, all that followed it are too. from is no
// later than when the delivery at pos was stored; the read starts there.
func (h *History) After(ctx context.Context, subject string, pos uint64, from time.Time, f func(data []byte) error) (replayed int, err error) {
	info, err := h.handle().Info(ctx)
	if err != nil {
		return 0, err
	}
	if info.State.Msgs == 0 {
		return 0, ErrExpired
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &from,
	}
	found := false
	err = h.replay(ctx, cfg, info.State.LastSeq, func(m jetstream.Msg, _ uint64) error {
		env, err := route.ParseDelivery(m.Data())
		if err != nil {
			return nil
		}
		id := env.ID()
		switch {
		case id == 0:
			return nil // a frame a gateway made: never replayed
		case !found:
			if id > pos {
				return ErrExpired // the delivery at pos is gone
			}
			found = id == pos
			return nil
		case id <= pos:
			return nil // a repeat of one before
		}
		pos = id
		replayed++
		return f(m.Data())
	})
	if err == nil && !found {
		err = ErrExpired
	}
	return replayed, err
}

// replay reads with an ordered consumer until it has passed last, the
// stream's last sequence when the replay began: later deliveries reach
// the reader live.
func (h *History) replay(ctx context.Context, cfg jetstream.OrderedConsumerConfig, last uint64, f func(jetstream.Msg, uint64) error) error {
	cons, err := h.handle().OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	pending := info.NumPending
	for pending > 0 {
		batch, err := cons.Fetch(int(min(pending, fetchBatch)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("history: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("history: %w", err)
			}
			if meta.Sequence.Stream > last {
				return nil
			}
			if err := f(m, meta.Sequence.Stream); err != nil {
				return err
			}
			pending = meta.NumPending
			if pending == 0 || meta.Sequence.Stream == last {
				return nil
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("history: %w", err)
		}
		if n == 0 {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Nothing came though some were pending: they expired
			// meanwhile.
			return ErrExpired
		}
	}
	return nil
}
