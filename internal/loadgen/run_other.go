//go:build !linux

package loadgen

import (
	"context"
	"errors"

	"github.com/rs/zerolog"
)

// Run needs Linux: the load generator is built on epoll.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) (*Summary, error) {
	return nil, errors.New("loadgen runs on Linux only (it uses epoll)")
}
