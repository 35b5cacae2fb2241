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

// Webhooks: gateways to workers.
const (
	// HooksPrefix starts a webhook record's subject,
	// resound.hooks.<app>.<lane> (webhook.Subject): one transition
	// (webhook.Record) a gateway saw, stored by the RESOUND_WEBHOOKS
	// stream until a worker has delivered it to every receiver that wants
	// it. A channel's records share a lane, so they stay in order.
	HooksPrefix = "resound.hooks."
)

// The dashboard's debug console: every process to the gateway that serves
// a dashboard watching an app. Core NATS, never stored: the console may
// lose entries, never slow what it watches.
const (
	// ConsolePrefix starts resound.console.<app>: one ConsoleEntry.
	ConsolePrefix = "resound.console."
	// ConsoleWatch: a dashboard says it watches an app
	// (ConsoleWatchRequest), again before the lease runs out; processes
	// send entries for that app only while a lease holds.
	ConsoleWatch = "resound.ctl.console.watch"
	// Stats: a dashboard asks every process for its figures (StatsRequest);
	// each answers once (StatsReply).
	Stats = "resound.ctl.stats"
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

// ConsoleEntry is one line of the debug console: what happened, where,
// and when.
type ConsoleEntry struct {
	TimeMS int64 `json:"time_ms"`
	// Kind is connection, disconnection, subscribed, unsubscribed,
	// api_message, client_event, webhook or error.
	Kind     string `json:"kind"`
	Process  string `json:"process"` // the gateway or worker id
	SocketID string `json:"socket_id,omitempty"`
	Channel  string `json:"channel,omitempty"`
	Event    string `json:"event,omitempty"`
	UserID   string `json:"user_id,omitempty"`
	// Detail is free text: a close code and reason, a webhook's status,
	// a payload's first bytes.
	Detail string `json:"detail,omitempty"`
	// Dropped counts the entries this process left out before this one
	// (over its RESOUND_CONSOLE_RATE), so the console can say so.
	Dropped int `json:"dropped,omitempty"`
}

// The kinds of ConsoleEntry.
const (
	ConsoleConnection    = "connection"
	ConsoleDisconnection = "disconnection"
	ConsoleSubscribed    = "subscribed"
	ConsoleUnsubscribed  = "unsubscribed"
	ConsoleAPIMessage    = "api_message"
	ConsoleClientEvent   = "client_event"
	ConsoleWebhook       = "webhook"
	ConsoleError         = "error"
)

// ConsoleWatchRequest is the message on ConsoleWatch.
type ConsoleWatchRequest struct {
	App string `json:"app"`
	// UntilMS is when the lease ends (unix milliseconds).
	UntilMS int64 `json:"until_ms"`
}

// StatsRequest is the message on Stats; an empty App asks for every app.
type StatsRequest struct {
	App string `json:"app,omitempty"`
}

// StatsReply is one process's figures, per app.
type StatsReply struct {
	Process string              `json:"process"`
	Kind    string              `json:"kind"` // gateway or worker
	Apps    map[string]AppStats `json:"apps"`
}

// AppStats are one process's figures for one app. Counters only grow
// (the dashboard makes rates of them); gauges are now.
type AppStats struct {
	Connections     int   `json:"connections"`      // gauge
	Channels        int   `json:"channels"`         // gauge, local
	Subscriptions   int   `json:"subscriptions"`    // gauge
	PresenceMembers int   `json:"presence_members"` // gauge, local connections on presence channels
	MessagesIn      int64 `json:"messages_in"`      // counter: API events and client events accepted
	DeliveriesOut   int64 `json:"deliveries_out"`   // counter: frames written to sockets
	WebhooksSent    int64 `json:"webhooks_sent"`    // counter (workers)
	WebhooksFailed  int64 `json:"webhooks_failed"`  // counter: attempts that failed (workers)
	WebhooksDropped int64 `json:"webhooks_dropped"` // counter (workers)
	Errors          int64 `json:"errors"`           // counter: pusher:error sent, closes with 4xxx
}

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
