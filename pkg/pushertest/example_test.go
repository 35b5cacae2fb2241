package pushertest_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// API signs HTTP API requests as the Pusher server SDKs do. Here a stand-in
// server checks the signature with the protocol package; in a test, BaseURL
// is a running Resound gateway (the Client half of the package then reads
// the frames its sockets receive: see Connect, Subscribe and Expect).
func ExampleAPI() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		q := r.URL.Query()
		sig := q.Get("auth_signature")
		q.Del("auth_signature")
		ok := protocol.VerifyRequestSignature("app-secret", r.Method, r.URL.Path, q, sig) &&
			q.Get("body_md5") == protocol.BodyMD5(body)
		fmt.Println(r.Method, r.URL.Path, "signed:", ok)
		_, _ = w.Write([]byte("{}"))
	}))
	defer srv.Close()

	api := &pushertest.API{BaseURL: srv.URL, AppID: "123456", Key: "app-key", Secret: "app-secret"}
	res := api.Trigger([]string{"orders.42"}, "App\\Events\\OrderShipped", `{"order_id":42}`, "")
	fmt.Println(res.Status, string(res.Body))
	// Output:
	// POST /apps/123456/events signed: true
	// 200 {}
}
