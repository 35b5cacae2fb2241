package loadgen

import (
	"bufio"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"
)

// control is a run's commands, read from Config.Control one a line: a
// harness that runs several load generators through phases (connect,
// hold, send, …) tells each when the next one starts.
type control struct {
	send, stop         chan struct{} // closed by "send"; by "stop" or the end of the input
	sendOnce, stopOnce sync.Once
	// phase is the latency phase now: 0 before the first "phase" command,
	// i for the i-th (names[i-1]). The pollers read it for each delivery.
	phase atomic.Int32
	mu    sync.Mutex
	names []string
}

func newControl(in io.Reader, log zerolog.Logger) *control {
	c := &control{send: make(chan struct{}), stop: make(chan struct{})}
	go c.read(in, log)
	return c
}

func (c *control) read(in io.Reader, log zerolog.Logger) {
	defer c.stopOnce.Do(func() { close(c.stop) })
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch cmd {
		case "send":
			c.sendOnce.Do(func() { close(c.send) })
		case "phase":
			if arg = strings.TrimSpace(arg); arg == "" {
				log.Warn().Msg("control: phase needs a name")
				continue
			}
			c.mu.Lock()
			c.names = append(c.names, arg)
			c.phase.Store(int32(len(c.names)))
			c.mu.Unlock()
			log.Info().Str("phase", arg).Msg("control: latency phase")
		case "stop":
			return
		case "":
		default:
			log.Warn().Str("command", cmd).Msg("control: unknown command (send, phase NAME, stop)")
		}
	}
}

func (c *control) sending() bool { return closed(c.send) }
func (c *control) stopped() bool { return closed(c.stop) }

// phaseNames are the phases' names, by phase number - 1.
func (c *control) phaseNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.names...)
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// add folds one poller's all-channel counts in.
func (a *AllStats) add(st *pollStats) {
	a.Subscribed += st.allSubscribed
	a.Duplicates += st.allDup
	a.OutOfOrder += st.allOOO
	a.Unexpected += st.allOdd
	for i := range st.all {
		e := &st.all[i]
		if e.deliveries == 0 {
			continue
		}
		a.Deliveries += e.deliveries
		a.Events = a.event(i + 1)
		a.Events[i].merge(AllEvent{Seq: i + 1, Deliveries: e.deliveries, FirstRecvMs: e.firstRecv / 1e6,
			LastRecvMs: e.lastRecv / 1e6, LastLatencyMs: ms(e.maxLatency)})
	}
}
