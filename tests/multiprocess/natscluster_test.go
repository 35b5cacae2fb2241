package multiprocess

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// A real NATS cluster for the tests: natsClusterSize nats-server
// processes with JetStream, routed to each other on loopback, each with
// its own store directory, as the Compose file and the Kubernetes
// manifests run it. Give every Resound process urls(), all of them, and
// RESOUND_NATS_REPLICAS=3 (replicasEnv).
//
// Nodes can be killed (SIGKILL) and restarted on the same ports and
// store, to test losing one. Each start of a node logs to a file of its
// own, whose tail is printed when the test fails.

const natsClusterSize = 3

// natsStartTimeout bounds a node's start and a fresh cluster's first
// meta-leader election.
const natsStartTimeout = 30 * time.Second

// natsCluster is a running NATS cluster.
type natsCluster struct {
	t     *testing.T
	nodes []*natsNode
}

// natsNode is one server of it.
type natsNode struct {
	name                           string // server name: n0, n1, n2
	port, clusterPort, monitorPort int
	storeDir                       string
	routes                         string // every node's cluster URL
	proc                           *proc
	starts                         int
}

// replicasEnv is the setting every Resound process on a natsCluster gets.
const replicasEnv = "RESOUND_NATS_REPLICAS=3"

// startNATSCluster starts the nodes, all at once, and waits until each
// answers /healthz (which includes JetStream) and all agree on a meta
// leader.
func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c := &natsCluster{t: t}
		var routes []string
		for i := range natsClusterSize {
			n := &natsNode{name: "n" + strconv.Itoa(i), port: freePort(t), clusterPort: freePort(t), monitorPort: freePort(t), storeDir: t.TempDir()}
			routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(n.clusterPort))
			c.nodes = append(c.nodes, n)
		}
		for _, n := range c.nodes {
			n.routes = strings.Join(routes, ",")
			n.launch(t)
		}
		err := c.awaitHealthy()
		if err == nil {
			return c
		}
		taken := false
		for _, n := range c.nodes {
			taken = taken || n.proc.portTaken()
		}
		if !taken || attempt == bindAttempts {
			t.Fatal(err)
		}
		// A port was taken between freePort and the bind: start over on
		// fresh ports, since every node names the others' routes.
		for _, n := range c.nodes {
			n.proc.kill(t)
		}
	}
}

// launch starts the node's server without waiting for it.
func (n *natsNode) launch(t *testing.T) {
	t.Helper()
	n.starts++
	name := "nats-" + n.name
	if n.starts > 1 {
		name += "-start" + strconv.Itoa(n.starts)
	}
	// A route to itself is allowed: the server recognises and drops it,
	// which lets every node get the same list.
	n.proc = startProc(t, name, "nats-server", nil,
		"-js", "-sd", n.storeDir, "-n", n.name, "--cluster_name", "resound-test",
		"-a", "127.0.0.1", "-p", strconv.Itoa(n.port), "-m", strconv.Itoa(n.monitorPort),
		"--cluster", "nats://127.0.0.1:"+strconv.Itoa(n.clusterPort), "--routes", n.routes)
}

// url is the node's client URL.
func (n *natsNode) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

func (n *natsNode) monitorURL() string { return "http://127.0.0.1:" + strconv.Itoa(n.monitorPort) }

// urls is every node's client URL, comma-separated: NATS_URL.
func (c *natsCluster) urls() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, n.url())
	}
	return strings.Join(urls, ",")
}

// kill stops node i with SIGKILL.
func (c *natsCluster) kill(i int) {
	c.t.Helper()
	c.nodes[i].proc.kill(c.t)
}

// restart starts node i again, on its ports and store, and waits until
// the cluster is healthy again with it.
func (c *natsCluster) restart(i int) {
	c.t.Helper()
	n := c.nodes[i]
	if !n.proc.exited() {
		c.t.Fatalf("restarting %s, which is running", n.name)
	}
	n.launch(c.t)
	if err := c.awaitHealthy(); err != nil {
		c.t.Fatal(err)
	}
}

// awaitHealthy waits until every running node answers /healthz with 200
// and names the same meta leader, with every node a current peer of it.
func (c *natsCluster) awaitHealthy() error {
	deadline := time.Now().Add(natsStartTimeout)
	for _, n := range c.nodes {
		if n.proc.exited() {
			continue
		}
		err := poll(n.proc, time.Until(deadline), "healthy "+n.name, func() bool {
			return n.get("/healthz", nil) == nil
		})
		if err != nil {
			return err
		}
	}
	var last string
	err := poll(nil, time.Until(deadline), "one meta leader with every node current", func() bool {
		leaders := map[string]bool{}
		for _, n := range c.nodes {
			if n.proc.exited() {
				continue
			}
			var j clusterJSZ
			if err := n.get("/jsz", &j); err != nil || j.Meta == nil || j.Meta.Leader == "" {
				last = fmt.Sprintf("%s: no meta leader (%v)", n.name, err)
				return false
			}
			leaders[j.Meta.Leader] = true
			if j.Meta.Leader == n.name && !j.allCurrent(c.running()) {
				last = fmt.Sprintf("meta leader %s: peers %+v", n.name, j.Meta.Replicas)
				return false
			}
		}
		last = fmt.Sprintf("meta leaders %v", leaders)
		return len(leaders) == 1
	})
	if err != nil {
		return fmt.Errorf("%v: %s", err, last)
	}
	return nil
}

// running counts the nodes whose process is up.
func (c *natsCluster) running() int {
	k := 0
	for _, n := range c.nodes {
		if !n.proc.exited() {
			k++
		}
	}
	return k
}

// get GETs path from the node's monitoring port and decodes the JSON
// answer into v (when not nil); any status but 200 is an error.
func (n *natsNode) get(path string, v any) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(n.monitorURL() + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s on %s: %s", path, n.name, resp.Status)
	}
	if v == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// clusterJSZ is the part of /jsz?streams=true the cluster tests read.
type clusterJSZ struct {
	Meta *struct {
		Leader   string `json:"leader"`
		Size     int    `json:"cluster_size"`
		Replicas []struct {
			Name    string `json:"name"`
			Current bool   `json:"current"`
			Offline bool   `json:"offline"`
		} `json:"replicas"`
	} `json:"meta_cluster"`
	Accounts []struct {
		Streams []struct {
			Name    string `json:"name"`
			Cluster *struct {
				Leader string `json:"leader"`
			} `json:"cluster"`
			State struct {
				Messages int `json:"messages"`
			} `json:"state"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

// allCurrent reports whether the meta leader sees want-1 current peers
// besides itself.
func (j *clusterJSZ) allCurrent(want int) bool {
	k := 0
	for _, r := range j.Meta.Replicas {
		if r.Current && !r.Offline {
			k++
		}
	}
	return k >= want-1
}

// metaLeader returns the index of the JetStream meta leader, asking the
// running nodes; -1 while there is none.
func (c *natsCluster) metaLeader() int {
	for _, n := range c.nodes {
		var j clusterJSZ
		if !n.proc.exited() && n.get("/jsz", &j) == nil && j.Meta != nil && j.Meta.Leader != "" {
			return c.index(j.Meta.Leader)
		}
	}
	return -1
}

// streamLeader returns the index of the node leading stream, asking the
// running nodes; -1 while it has none.
func (c *natsCluster) streamLeader(stream string) int {
	for _, n := range c.nodes {
		if n.proc.exited() {
			continue
		}
		var j clusterJSZ
		if n.get("/jsz?streams=true", &j) != nil {
			continue
		}
		for _, a := range j.Accounts {
			for _, s := range a.Streams {
				if s.Name == stream && s.Cluster != nil && s.Cluster.Leader != "" {
					return c.index(s.Cluster.Leader)
				}
			}
		}
	}
	return -1
}

// moveStreamLeader makes node to the leader of stream: it asks the
// current leader to step down in favour of node to (nats-server 2.11+),
// again until it is so.
func (c *natsCluster) moveStreamLeader(stream string, to int) {
	c.t.Helper()
	nc, err := nats.Connect(c.nodes[to].url())
	if err != nil {
		c.t.Fatal(err)
	}
	defer nc.Close()
	req := []byte(`{"placement":{"preferred":"` + c.nodes[to].name + `"}}`)
	var last string
	err = poll(nil, natsStartTimeout, stream+" led by "+c.nodes[to].name, func() bool {
		if c.streamLeader(stream) == to {
			return true
		}
		if m, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, req, 2*time.Second); err != nil {
			last = err.Error()
		} else {
			last = string(m.Data)
		}
		// The election takes a moment: look before asking again.
		time.Sleep(500 * time.Millisecond)
		return c.streamLeader(stream) == to
	})
	if err != nil {
		c.t.Fatalf("%v (last answer: %s)", err, last)
	}
}

// index is the index of the node named name, or -1.
func (c *natsCluster) index(name string) int {
	for i, n := range c.nodes {
		if n.name == name {
			return i
		}
	}
	return -1
}

// clients counts the client connections node i holds, by connection name
// (resound-gateway, resound-api, resound-worker, ...).
func (c *natsCluster) clients(i int) map[string]int {
	c.t.Helper()
	var cz struct {
		Conns []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	if err := c.nodes[i].get("/connz?limit=1024", &cz); err != nil {
		c.t.Fatal(err)
	}
	out := map[string]int{}
	for _, conn := range cz.Conns {
		out[conn.Name]++
	}
	return out
}
