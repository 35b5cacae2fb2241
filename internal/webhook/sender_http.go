package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/protocol"
)

// maxResponseRead is how much of a receiver's answer is read (and
// discarded) so that its connection can be reused; the rest is not read.
const maxResponseRead = 4 << 10

// NewHTTPClient returns the client webhooks are sent with. A receiver may
// be any URL the operator configured, so every step is bounded: the whole
// exchange by timeout, dialing, TLS and the response head within it,
// response headers to 64 KiB. Redirects are not followed: Pusher counts
// any answer but a 2xx as a failure, and so does Resound (a 3xx is
// retried like a 5xx), so a moved receiver shows up as failing rather
// than having its signed bodies sent on to wherever it points.
func NewHTTPClient(timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: min(timeout, 5*time.Second), KeepAlive: 30 * time.Second}
	return &http.Client{
		Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
		Transport: &http.Transport{
			Proxy:                  http.ProxyFromEnvironment,
			DialContext:            dialer.DialContext,
			ForceAttemptHTTP2:      true,
			TLSHandshakeTimeout:    timeout,
			ResponseHeaderTimeout:  timeout,
			ExpectContinueTimeout:  time.Second,
			MaxResponseHeaderBytes: 64 << 10,
			MaxIdleConns:           100,
			MaxIdleConnsPerHost:    8,
			IdleConnTimeout:        90 * time.Second,
		},
	}
}

const userAgent = "Resound-Webhooks"

// post sends one signed body to a receiver: Pusher's headers, then the
// webhook's own (config forbids those that would replace Pusher's). It
// returns the status, and an error unless the status is 2xx.
func (s *Sender) post(ctx context.Context, app *config.App, hook *config.Webhook, body []byte, signature string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook.URL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("X-Pusher-Key", app.Key)
	h.Set("X-Pusher-Signature", signature)
	h.Set("User-Agent", userAgent)
	for k, v := range hook.Headers {
		h.Set(k, v)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, quiet(err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseRead))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("answered %s", resp.Status)
	}
	return resp.StatusCode, nil
}

// quiet drops the URL from a client error: it may carry a token in its
// query, and it goes to the logs and the console.
func quiet(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return errors.New("timed out")
		}
		return ue.Err
	}
	return err
}

// shownURL is a receiver's URL as logged and shown: without its query,
// fragment or user info, which may carry credentials.
func shownURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// sign is X-Pusher-Signature for body.
func sign(app *config.App, body []byte) string { return protocol.SignWebhook(app.Secret, body) }
