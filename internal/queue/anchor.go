package queue

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// The anchor is one message in the job stream that no consumer takes,
// kept near the stream's end so that its last message block never
// empties.
//
// Why: in a work-queue stream on file storage a job is removed when a
// worker acks it, and when a removal empties the stream's last message
// block, nats-server replaces the block's file: it creates a new one,
// writes a tombstone into it to remember the last sequence, and deletes
// the old one, all under the stream's lock (filestore.go removeMsgBlock;
// see nats-server pull request 6789). A stream whose workers keep up is
// empty after nearly every ack, so this happened for nearly every job: at
// 1,000 jobs/s it was 17% of an all-in-one gateway's CPU (openat, write,
// close, unlink), and a publish that arrived meanwhile waited for the
// lock. With a message that stays, the last block never empties.
//
// When the last block fills, the next one starts without an anchor, so
// the anchor is published again every AnchorEvery, and the older ones
// are purged, the newest kept. Each worker keeps one; with several, the
// purges leave one or a few, and an anchor whose keeper died goes with
// the next purge.
const (
	AnchorSubject = SubjectPrefix + "anchor"
	AnchorEvery   = time.Second
)

// KeepAnchor publishes the anchor every interval until ctx ends. A
// failure (NATS away, a full stream refusing the anchor) costs nothing but
// the block churn the anchor saves, so it is logged at debug and tried
// again at the next interval.
func KeepAnchor(ctx context.Context, js jetstream.JetStream, every time.Duration, log zerolog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	var stream jetstream.Stream // looked up once, again after a failure
	for {
		var err error
		// A round may outlast a short interval: a publish that timed out
		// may still be stored, and its round would leave it unpurged.
		if stream, err = anchor(ctx, js, stream, max(every, time.Second)); err != nil && ctx.Err() == nil {
			log.Debug().Err(err).Msg("job stream anchor")
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// anchor publishes one anchor and purges the ones before it. It returns
// the stream's handle for the next round: nil when looking it up or the
// purge failed, so that the next round looks it up again.
func anchor(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, timeout time.Duration) (jetstream.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: AnchorSubject}, jetstream.WithExpectStream(StreamName)); err != nil {
		return stream, err
	}
	if stream == nil {
		var err error
		if stream, err = js.Stream(ctx, StreamName); err != nil {
			return nil, err
		}
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject(AnchorSubject), jetstream.WithPurgeKeep(1)); err != nil {
		return nil, err
	}
	return stream, nil
}

// Jobs is the number of jobs s holds, the anchors not counted: the sum of
// its job subjects' counts (app, key and partition), read in one pass
// over the stream's subject index. Its message count less its anchors
// would be two reads apart in the server, and a worker's publish or purge
// between them would skew the difference, even below zero.
func Jobs(ctx context.Context, s jetstream.Stream) (uint64, error) {
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(SubjectPrefix+"*.*.*"))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}
