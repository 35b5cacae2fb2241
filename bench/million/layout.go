//go:build linux

package main

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"

	"github.com/resoundhq/resound/internal/loadgen"
)

// layout is how the sockets are spread over the processes.
type layout struct {
	Gateways   int `json:"gateways"`
	PerGateway int `json:"per_gateway"`
	Sockets    int `json:"sockets"`
	Workers    int `json:"workers"`
	// Loadgens is how many load generators hold the sockets; load
	// generator i is shard i of Loadgens, by channel.
	Loadgens int `json:"loadgens"`
	// Channels are the small channels, ChannelSize subscribers each; every
	// PresenceEvery-th of each load generator's is a presence channel.
	Channels      int `json:"channels"`
	ChannelSize   int `json:"channel_size"`
	PresenceEvery int `json:"presence_every"`
	// Sources is each load generator's source addresses.
	SourcesPer int `json:"sources_per_loadgen"`
	// Drained are the gateways (0-based) SIGTERMed in the drain phase,
	// spread out so that no two are neighbours.
	Drained []int `json:"drained"`
	// InflightPer is each load generator's handshakes in flight at most.
	InflightPer int `json:"inflight_per_loadgen"`
}

// maxPerGateway keeps a gateway under this machine's open-files limit
// (20,000 a process, not raisable) with room for its listeners, NATS,
// the API's connections and handshakes in flight.
const maxPerGateway = 19_500

func planLayout(o options) (layout, error) {
	l := layout{Gateways: o.gateways, PerGateway: o.perGateway, Workers: o.workers, ChannelSize: o.channelSize,
		PresenceEvery: o.presenceEvery, SourcesPer: o.sourcesPer}
	switch {
	case o.gateways < 2:
		return l, errors.New("-gateways: at least 2 (one is drained)")
	case o.perGateway < 1 || o.workers < 1 || o.channelSize < 1 || o.perLoadgen < 1 || o.sourcesPer < 1:
		return l, errors.New("-per-gateway, -workers, -channel-size, -per-loadgen and -sources-per-loadgen must be positive")
	case o.perLoadgen > loadgen.DefaultMaxConnsPerProcess:
		return l, fmt.Errorf("-per-loadgen: at most %d (the open-files limit of a process)", loadgen.DefaultMaxConnsPerProcess)
	}
	l.Sockets = o.gateways * o.perGateway
	l.Channels = (l.Sockets + o.channelSize - 1) / o.channelSize
	l.Loadgens = (l.Sockets + o.perLoadgen - 1) / o.perLoadgen
	// A load generator's share is its channels' subscribers: it must be
	// below the limit even for the shard with the most.
	for l.maxShare() > o.perLoadgen {
		l.Loadgens++
	}
	if l.Loadgens > 250*250 || o.sourcesPer > 254 {
		return l, errors.New("too many load generators, or sources each, for the loopback addresses")
	}
	nd := max(1, int(math.Round(float64(o.gateways)*o.drainFraction)))
	if o.drainFraction <= 0 {
		nd = 0
	}
	if nd >= o.gateways {
		return l, errors.New("-drain-fraction leaves no gateway to reconnect to")
	}
	for j := range nd {
		l.Drained = append(l.Drained, int((float64(j)+0.5)*float64(o.gateways)/float64(nd)))
	}
	// After the drain, the others hold everyone.
	if after := l.perGatewayAfterDrain(); after > maxPerGateway {
		return l, fmt.Errorf("after the drain each remaining gateway would hold about %d sockets, over the %d a process can (open files): "+
			"use more gateways, fewer sockets each, or a smaller -drain-fraction", after, maxPerGateway)
	}
	l.InflightPer = max(1, o.inflight/l.Loadgens)
	return l, nil
}

// presenceChannels are the presence channels, by index, with their
// subscribers: every PresenceEvery-th channel of each load generator
// (loadgen's -presence-every), channel c holding the connections k < Sockets
// with k mod Channels = c.
func (l layout) presenceChannels() map[int]int {
	out := map[int]int{}
	if l.PresenceEvery <= 0 {
		return out
	}
	for c := 0; c < l.Channels; c++ {
		if (c/l.Loadgens)%l.PresenceEvery == 0 {
			out[c] = (l.Sockets - c + l.Channels - 1) / l.Channels
		}
	}
	return out
}

// loadgenChannel is the name the load generators give channel c.
func loadgenChannel(c int) string { return "lg-" + runName + "-" + strconv.Itoa(c) }

// maxShare is the most connections one load generator holds.
func (l layout) maxShare() int {
	// Shard i owns channels c ≡ i (mod Loadgens); channel c has
	// ChannelSize subscribers, the last channel perhaps fewer.
	perShard := (l.Channels + l.Loadgens - 1) / l.Loadgens
	return perShard * l.ChannelSize
}

func (l layout) perGatewayAfterDrain() int {
	left := l.Gateways - len(l.Drained)
	return (l.Sockets + left - 1) / left
}

// sourcesFlag is -sources for load generator i: SourcesPer addresses of
// its own, 127.A.B.1 on, with A.B = i/250, i%250+1, so that the ports of a
// (source, gateway) pair are never short (portsPerPair).
func (l layout) sourcesFlag(i int) string {
	first := netip.AddrFrom4([4]byte{127, byte(i / 250), byte(i%250 + 1), 1})
	last := netip.AddrFrom4([4]byte{127, byte(i / 250), byte(i%250 + 1), byte(l.SourcesPer)})
	return first.String() + "-" + last.String()
}

// portsPerPair is the most connections one (source address, gateway)
// pair carries: each needs an ephemeral port of its own, and there are
// ip_local_port_range's worth. At worst all of a load generator's
// connections through one source go to one gateway.
func (l layout) portsPerPair() int {
	return (l.maxShare() + l.SourcesPer - 1) / l.SourcesPer
}
