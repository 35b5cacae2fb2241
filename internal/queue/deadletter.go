package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/ensure"
	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/wire"
)

// The dead-letter stream: jobs a worker set aside, because they are invalid
// or kept failing, kept where an operator can read and replay them.
const (
	DeadLetterStream = "RESOUND_DEAD_LETTERS"
	// DeadLetterPrefix starts every dead letter's subject:
	// resound.dead.<app_id>.<key>, the job's subject under another prefix.
	DeadLetterPrefix = wire.DeadLetterPrefix
	// A week is long enough to notice and replay over a holiday; 64 MiB
	// keeps thousands of jobs (at most ~1 MiB each, the NATS payload
	// limit) without letting a flood of poison jobs fill the disk: the
	// oldest go first.
	DeadLetterMaxAge   = 7 * 24 * time.Hour
	DeadLetterMaxBytes = 64 << 20
)

// Headers of a dead letter.
const (
	// HeaderReason says why the job was set aside.
	HeaderReason = "Resound-Reason"
	// HeaderSubject is the job's subject as stored in the job stream,
	// partition included.
	HeaderSubject = "Resound-Subject"
	// HeaderStreamSeq is the job's sequence in the job stream.
	HeaderStreamSeq = "Resound-Stream-Seq"
	// HeaderDeliveries is how many times JetStream had delivered the job.
	HeaderDeliveries = "Resound-Deliveries"
)

// maxReason bounds the reason header: it quotes errors, which may quote
// the job.
const maxReason = 512

// DeadLetterSubject is where the job stored on subject goes when set
// aside: resound.jobs.<app>.<key>.<partition> becomes
// resound.dead.<app>.<key>.
//
// The partition is dropped. Replacing resound.dead. with resound.jobs.
// then gives exactly the subject a producer publishes to, so replaying a
// dead letter is one publish: the job stream accepts only
// resound.jobs.*.* and computes the partition again itself, with whatever
// RESOUND_PARTITIONS is by then. The stored subject, partition and all,
// is kept in the Resound-Subject header.
func DeadLetterSubject(stored string) string {
	rest, ok := strings.CutPrefix(stored, SubjectPrefix)
	if !ok || rest == "" {
		// Not a job subject (the stream's configuration was changed by
		// hand): keep it whole, as one token, rather than lose it.
		return DeadLetterPrefix + route.EscapeToken(stored)
	}
	if strings.Count(rest, ".") == 2 {
		rest = rest[:strings.LastIndexByte(rest, '.')]
	}
	return DeadLetterPrefix + rest
}

// DeadLetter is a job set aside.
type DeadLetter struct {
	Subject    string // the job's stored subject
	Data       []byte // the job's body, as stored
	Reason     string
	StreamSeq  uint64 // 0 if unknown
	Deliveries uint64
	Stored     time.Time // when the job stream stored it; zero if unknown
}

// PublishDeadLetter stores dl in the dead-letter stream and waits for
// JetStream to acknowledge it. duplicate reports that it was stored
// already: a worker that set the job aside before could not terminate it,
// and it came back. Each job's dead letter carries a Nats-Msg-Id made of
// its sequence and storage time, so a second one within the stream's
// duplicate window is dropped.
func PublishDeadLetter(ctx context.Context, js jetstream.JetStream, dl DeadLetter) (duplicate bool, err error) {
	m := &nats.Msg{Subject: DeadLetterSubject(dl.Subject), Data: dl.Data, Header: nats.Header{}}
	m.Header.Set(HeaderReason, cleanReason(dl.Reason))
	m.Header.Set(HeaderSubject, dl.Subject)
	m.Header.Set(HeaderStreamSeq, strconv.FormatUint(dl.StreamSeq, 10))
	m.Header.Set(HeaderDeliveries, strconv.FormatUint(dl.Deliveries, 10))
	if dl.StreamSeq != 0 && !dl.Stored.IsZero() {
		m.Header.Set(jetstream.MsgIDHeader, "dead-"+strconv.FormatUint(dl.StreamSeq, 10)+"-"+strconv.FormatInt(dl.Stored.UnixNano(), 10))
	}
	ack, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(DeadLetterStream))
	if err != nil {
		return false, fmt.Errorf("queue: dead letter: %w", err)
	}
	return ack.Duplicate, nil
}

// cleanReason makes a reason fit a header value: one line of valid UTF-8,
// of bounded length.
func cleanReason(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxReason {
		s = strings.ToValidUTF8(s[:maxReason], "") + "…"
	}
	if s == "" {
		s = "unknown"
	}
	return s
}

// ensureDeadLetters creates the dead-letter stream or updates it to
// Resound's settings. Limits retention: a dead letter stays until it ages
// out or the stream is full, whoever reads it; DiscardOld, so that setting
// a job aside never fails for a full stream.
func ensureDeadLetters(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := CreateOrUpdate(ctx, js, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "Resound jobs set aside: invalid, or failed every attempt",
		Subjects:    []string{DeadLetterPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxBytes:    DeadLetterMaxBytes,
		MaxAge:      DeadLetterMaxAge,
		Replicas:    replicas,
		Duplicates:  2 * time.Minute,
	})
	return err
}

// CreateOrUpdate creates the stream cfg names, or updates it to cfg, when
// other processes may be doing the same at the same time, on a NATS
// cluster that may still be settling (see package ensure).
func CreateOrUpdate(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := ensure.Stream(ctx, js, cfg)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", cfg.Name, err)
	}
	return s, nil
}
