package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The worker process links neither the embedded NATS server nor the
// gateway and its HTTP API: it is deployed and scaled on its own, and
// what it does not link cannot cost it memory, start-up time or
// vulnerabilities. internal/streams exists so that it need not import
// internal/node for the JetStream set-up.
func TestWorkerLinksNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/nats-io/nats-server/",
		"github.com/resoundhq/resound/internal/natsembed",
		"github.com/resoundhq/resound/internal/node",
		"github.com/resoundhq/resound/internal/gateway",
		"github.com/resoundhq/resound/internal/httpapi",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f) && strings.HasSuffix(f, "/") {
				t.Errorf("cmd/worker links %s", dep)
			}
		}
	}
}
