package producer_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/natsembed"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/pkg/producer"
)

// A Go service broadcasts an event straight into the job queue. Here the
// NATS server is embedded so that the example runs on its own; a real
// producer connects with nats.Connect(os.Getenv("NATS_URL")).
func Example() {
	dir, _ := os.MkdirTemp("", "resound-example")
	defer os.RemoveAll(dir)
	srv, err := natsembed.Start(natsembed.Options{StoreDir: dir, Log: zerolog.Nop()})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, _ := srv.Connect("example")
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	// Resound's gateways and workers create the stream; the example has
	// neither, so it does it itself.
	if _, err := queue.EnsureStream(ctx, js, queue.StreamOptions{MaxBytes: 64 << 20}); err != nil {
		panic(err)
	}

	p := producer.New(js)
	seq, err := p.TriggerJSON(ctx, "123456", []string{"orders.42"}, "App\\Events\\OrderShipped",
		map[string]any{"order_id": 42, "status": "shipped"})
	if err != nil {
		panic(err)
	}
	fmt.Println("queued as job", seq)

	_, err = p.Trigger(ctx, "123456", producer.Event{Channels: []string{"orders"}, Name: "pusher:forged", Data: "{}"})
	fmt.Println("rejected:", err)
	// Output:
	// queued as job 1
	// rejected: events[0]: event names starting with "pusher" are reserved
}
