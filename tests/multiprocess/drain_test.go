package multiprocess

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// A gateway stopped with SIGTERM drains: GET /up on its operations address
// answers 503 (so a load balancer takes it out) while its clients are
// closed with 4200, spread over RESOUND_DRAIN_WINDOW; the public port
// takes no new connection; and it exits 0 once they are gone.
func TestUpAnswers503WhileDraining(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	opsPort := freePort(t)
	ops := "http://127.0.0.1:" + strconv.Itoa(opsPort) + "/up"
	// All-in-one (no NATS_URL); 20 clients over a 2 s window are closed one
	// per 100 ms tick, so the drain lasts about 2 s.
	p, port := startListening(t, "gateway", append(appEnv(),
		"RESOUND_OPS_ADDR=127.0.0.1:"+strconv.Itoa(opsPort), "RESOUND_DRAIN_WINDOW=2"), 0)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	hc := &http.Client{Timeout: 2 * time.Second}
	upStatus := func() int {
		resp, err := hc.Get(ops)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if st := upStatus(); st != http.StatusOK {
		t.Fatalf("GET /up on the operations address: %d before the drain, want 200", st)
	}
	clients := make([]*pushertest.Client, 20)
	for i := range clients {
		clients[i] = pushertest.Connect(t, addr, appKey)
		clients[i].Subscribe("drain")
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, p, 10*time.Second, "GET /up answering 503 while draining", func() bool {
		return upStatus() == http.StatusServiceUnavailable
	})
	// The listener closes right after /up turns 503; refused from then on.
	waitFor(t, p, 5*time.Second, "the public port refusing connections while draining", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	for _, c := range clients {
		c.ExpectClose(protocol.CodeReconnect)
	}
	if code := p.stop(t); code != 0 {
		t.Fatalf("the drained gateway exited %d, want 0", code)
	}
}
