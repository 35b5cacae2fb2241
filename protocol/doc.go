// Package protocol is the Pusher Channels wire format (protocol version 7)
// and its HTTP API, as Resound speaks it: event shapes, error codes, channel
// names, request and channel-auth signatures, and the validation of what
// producers and clients send.
//
// It is pure: no sockets, no NATS, no clocks it reads itself, no package
// state. Every other Resound package imports it; it imports none of them.
//
// Where Pusher's documentation and Laravel Reverb disagree, the comments say
// which one this package follows and why. The reference is
// shared/reference/pusher-protocol-and-reverb.md.
package protocol
