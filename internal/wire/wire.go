// Package wire is the catalogue of every NATS subject Resound uses (all
// under resound.) and of the control messages sent on them. Nothing else
// spells a subject: the packages that build subjects from app ids and
// channel names (route.Subject, queue.Subject, queue.DeadLetterSubject,
// the gateway's user-state subjects) start from these prefixes.
//
// The binary messages have their own homes, named here: the delivery
// envelope is internal/route's (route.AppendDelivery, route.ParseDelivery) and
// the job is internal/queue's (queue.Job, documented for other programs in
// docs/jobs.md). The JSON control messages are defined here.
package wire

// Data: producers to workers to gateways.
const (
	// JobsPrefix starts a job's subject, resound.jobs.<app>.<key>, stored
	// by the RESOUND_JOBS stream with a lane number appended
	// (queue.Subject, queue.PartitionFilter).
	JobsPrefix = "resound.jobs."
	// DeadLetterPrefix starts the subject of a job that failed for good,
	// resound.dead.<app>.<key>.<lane> (queue.DeadLetterSubject).
	DeadLetterPrefix = "resound.dead."
	// DeliverPrefix starts a channel's delivery subject,
	// resound.deliver.<app>.<channel> (route.Subject): one encoded frame in
	// route's envelope, published by workers (and by gateways for the
	// events they make themselves), stored by the history stream, and
	// subscribed to by every gateway with a local subscriber.
	DeliverPrefix = "resound.deliver."
	// DeliverBarrier is in the history stream's subjects but is no
	// channel's: the history publishes to it to learn the stream's last
	// position.
	DeliverBarrier = DeliverPrefix + "_barrier"
)

// Control: between gateways, and from the HTTP API and workers to them.
const (
	// Terminate: every gateway closes a user's connections
	// (TerminateRequest; no reply).
	Terminate = "resound.ctl.terminate"
	// UserStatePrefix starts resound.ctl.user.<app>.<user>: a user's
	// online/offline transitions (UserState), which gateways subscribe to
	// for the watchlists of their signed-in connections.
	UserStatePrefix = "resound.ctl.user."
	// Query: the HTTP API asks every gateway about an app's channels
	// (QueryRequest); each live gateway answers once (QueryReply).
	Query = "resound.ctl.query"
	// Ready: every gateway answers with its id (no request body). An
	// answer proves that the gateway's NATS link is up and its delivery
	// subscriptions are back in place (cluster.AwaitGateways).
	Ready = "resound.ctl.ready"
)

// TerminateRequest is the message on Terminate.
type TerminateRequest struct {
	App    string `json:"app"`
	UserID string `json:"user_id"`
}

// UserState is the message on a UserStatePrefix subject.
type UserState struct {
	UserID string `json:"user_id"`
	Online bool   `json:"online"`
}

// QueryRequest asks about one app's channels: all of them, those with a
// prefix, or one.
type QueryRequest struct {
	App     string `json:"app"`
	Prefix  string `json:"prefix,omitempty"`
	Channel string `json:"channel,omitempty"`
	// ConnectionsOnly asks for the connection count alone.
	ConnectionsOnly bool `json:"connections_only,omitempty"`
}

// QueryReply is one gateway's answer to a QueryRequest.
type QueryReply struct {
	Gateway string `json:"gateway"`
	// Channels maps occupied channels to their local subscriber counts.
	Channels map[string]int `json:"channels"`
	// Connections counts the app's local connections on at least one
	// channel.
	Connections int `json:"connections"`
}
