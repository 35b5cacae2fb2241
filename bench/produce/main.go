// Command produce measures the Go producer path: jobs published straight
// into JetStream with pkg/producer, through the workers, to the gateways.
//
// It publishes -jobs single-channel events over -channels channels from
// -inflight goroutines, then watches the gateways' resound_deliveries_total
// until every event has been written to its subscribers (read from each
// gateway's /metrics on its RESOUND_OPS_ADDR, not its public port). Hold the
// subscribers with `loadgen idle -run R -channels C -conns C` first, so that
// channel lg-R-k has one subscriber on a gateway.
//
//	produce -nats nats://127.0.0.1:14222 -app 123456 -run prod -channels 1000 \
//	  -jobs 200000 -metrics http://127.0.0.1:9090/metrics   # a gateway run with RESOUND_OPS_ADDR=127.0.0.1:9090
//
// It prints one JSON line: the publish rate (acknowledged by JetStream) and
// the end-to-end rate (first publish to last delivery written).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/pkg/producer"
)

func main() {
	natsURL := flag.String("nats", os.Getenv("NATS_URL"), "NATS URL (default $NATS_URL)")
	app := flag.String("app", os.Getenv("REVERB_APP_ID"), "app id (default $REVERB_APP_ID)")
	run := flag.String("run", "prod", "loadgen run id: channels are lg-<run>-<k>")
	channels := flag.Int("channels", 1000, "channels, round-robin")
	jobs := flag.Int("jobs", 100000, "jobs to publish (producer calls)")
	batch := flag.Int("batch", 1, "events per job, all on the job's one channel (TriggerBatch)")
	inflight := flag.Int("inflight", 512, "publishing goroutines")
	conns := flag.Int("conns", 1, "NATS connections the goroutines share out")
	perJob := flag.Int("subscribers", 1, "subscribers per channel: deliveries expected per job")
	gateways := flag.String("metrics", "", "comma-separated gateway /metrics URLs (on RESOUND_OPS_ADDR) to watch for deliveries")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this")
	flag.Parse()
	if *natsURL == "" || *app == "" {
		fmt.Fprintln(os.Stderr, "produce: -nats and -app are required")
		os.Exit(2)
	}
	urls := strings.Split(*gateways, ",")
	if *gateways == "" {
		urls = nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	producers := make([]*producer.Producer, *conns)
	for i := range producers {
		nc, err := nats.Connect(*natsURL, nats.Name("resound-produce-bench"))
		if err != nil {
			fail(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			fail(err)
		}
		producers[i] = producer.New(js)
	}
	before, err := deliveries(urls)
	if err != nil {
		fail(err)
	}
	names := make([]string, *channels)
	for k := range names {
		names[k] = "lg-" + *run + "-" + strconv.Itoa(k)
	}

	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < *inflight; g++ {
		wg.Add(1)
		go func(p *producer.Producer) {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(*jobs) || ctx.Err() != nil {
					return
				}
				evs := make([]producer.Event, *batch)
				for j := range evs {
					evs[j] = producer.Event{Channels: names[i%int64(len(names)):][:1], Name: "bench", Data: `{"i":` + strconv.FormatInt(i, 10) + `,"j":` + strconv.Itoa(j) + `}`}
				}
				if _, err := p.TriggerBatch(ctx, *app, evs); err != nil {
					failed.Add(1)
				}
			}
		}(producers[g%len(producers)])
	}
	wg.Wait()
	published := time.Since(start)

	want := before + float64(int64(*jobs)-failed.Load())*float64(*perJob**batch)
	delivered := before
	for len(urls) > 0 && delivered < want && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		if delivered, err = deliveries(urls); err != nil {
			fail(err)
		}
	}
	total := time.Since(start)
	out := map[string]any{
		"jobs":               *jobs,
		"events_per_job":     *batch,
		"failed":             failed.Load(),
		"inflight":           *inflight,
		"nats_conns":         *conns,
		"channels":           *channels,
		"publish_s":          published.Seconds(),
		"published_per_s":    float64(*jobs) / published.Seconds(),
		"deliveries_watched": len(urls) > 0,
	}
	if len(urls) > 0 {
		out["deliveries"] = delivered - before
		out["deliveries_expected"] = want - before
		out["end_to_end_s"] = total.Seconds()
		out["end_to_end_jobs_per_s"] = float64(*jobs) / total.Seconds()
		out["end_to_end_events_per_s"] = float64(*jobs**batch) / total.Seconds()
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	if failed.Load() > 0 || delivered < want {
		os.Exit(1)
	}
}

// deliveries sums resound_deliveries_total over the gateways.
func deliveries(urls []string) (float64, error) {
	var sum float64
	for _, u := range urls {
		resp, err := http.Get(u)
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			// A gateway's public port answers 404 here: its metrics are
			// only on RESOUND_OPS_ADDR.
			resp.Body.Close()
			return 0, fmt.Errorf("%s: %s (a gateway serves /metrics on its RESOUND_OPS_ADDR only)", u, resp.Status)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "resound_deliveries_total "); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					resp.Body.Close()
					return 0, err
				}
				sum += f
			}
		}
		resp.Body.Close()
	}
	return sum, nil
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "produce:", err)
	os.Exit(1)
}
