package protocol

import (
	"strings"
	"testing"
)

// Vectors from the reference, §1.8 and §2.2.
const (
	vecKey    = "278d425bdf160c739803"
	vecSecret = "7ad3773142a6692b25b8"
	vecSocket = "1234.1234"
)

func TestSignChannelAuthVectors(t *testing.T) {
	tests := []struct {
		name    string
		message string
		want    string
	}{
		{
			name:    "private",
			message: ChannelAuthMessage(vecSocket, "private-foobar", "", false),
			want:    "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
		},
		{
			name:    "presence Mr. Channels",
			message: ChannelAuthMessage(vecSocket, "presence-foobar", `{"user_id":10,"user_info":{"name":"Mr. Channels"}}`, true),
			want:    "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
		},
		{
			name:    "user signin",
			message: UserAuthMessage(vecSocket, `{"id":"12345"}`),
			want:    "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Sign(vecSecret, tt.message); got != tt.want {
				t.Errorf("Sign(%q) = %s, want %s", tt.message, got, tt.want)
			}
			auth := vecKey + ":" + tt.want
			if !VerifyAuth(vecKey, vecSecret, auth, tt.message) {
				t.Errorf("VerifyAuth rejected the reference vector %q", auth)
			}
		})
	}
}

func TestChannelAuthMessage(t *testing.T) {
	tests := []struct {
		socket, channel, data string
		withData              bool
		want                  string
	}{
		{"1.2", "private-a", "", false, "1.2:private-a"},
		{"1.2", "private-a", "ignored", false, "1.2:private-a"},
		{"1.2", "presence-a", `{"user_id":1}`, true, `1.2:presence-a:{"user_id":1}`},
		{"1.2", "presence-a", "", true, "1.2:presence-a:"},
	}
	for _, tt := range tests {
		if got := ChannelAuthMessage(tt.socket, tt.channel, tt.data, tt.withData); got != tt.want {
			t.Errorf("ChannelAuthMessage(%q, %q, %q, %v) = %q, want %q", tt.socket, tt.channel, tt.data, tt.withData, got, tt.want)
		}
	}
	if got, want := UserAuthMessage("1.2", `{"id":"x"}`), `1.2::user::{"id":"x"}`; got != want {
		t.Errorf("UserAuthMessage = %q, want %q", got, want)
	}
}

func TestVerifyAuth(t *testing.T) {
	msg := ChannelAuthMessage(vecSocket, "private-foobar", "", false)
	sig := Sign(vecSecret, msg)
	tests := []struct {
		name    string
		appKey  string
		secret  string
		auth    string
		message string
		want    bool
	}{
		{"valid", vecKey, vecSecret, vecKey + ":" + sig, msg, true},
		{"valid uppercase hex", vecKey, vecSecret, vecKey + ":" + strings.ToUpper(sig), msg, true},
		{"wrong key part", vecKey, vecSecret, "someotherkey:" + sig, msg, false},
		{"empty key part", vecKey, vecSecret, ":" + sig, msg, false},
		{"key prefix only", vecKey, vecSecret, vecKey[:10] + ":" + sig, msg, false},
		{"non-hex signature", vecKey, vecSecret, vecKey + ":" + strings.Repeat("zz", 32), msg, false},
		{"odd-length hex", vecKey, vecSecret, vecKey + ":" + sig[:63], msg, false},
		{"truncated signature", vecKey, vecSecret, vecKey + ":" + sig[:62], msg, false},
		{"empty signature", vecKey, vecSecret, vecKey + ":", msg, false},
		{"missing colon", vecKey, vecSecret, vecKey + sig, msg, false},
		{"signature only", vecKey, vecSecret, sig, msg, false},
		{"extra colon part", vecKey, vecSecret, vecKey + ":" + sig + ":x", msg, false},
		{"tampered message", vecKey, vecSecret, vecKey + ":" + sig, "1234.1234:private-foobaz", false},
		{"tampered socket", vecKey, vecSecret, vecKey + ":" + sig, "1234.1235:private-foobar", false},
		{"wrong secret", vecKey, "not-the-secret", vecKey + ":" + sig, msg, false},
		{"empty auth", vecKey, vecSecret, "", msg, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := VerifyAuth(tt.appKey, tt.secret, tt.auth, tt.message); got != tt.want {
				t.Errorf("VerifyAuth(%q, %q, %q, %q) = %v, want %v", tt.appKey, tt.secret, tt.auth, tt.message, got, tt.want)
			}
		})
	}
}

func TestBodyMD5(t *testing.T) {
	tests := []struct {
		body string
		want string
	}{
		{`{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}`, "ec365a775a4cd0599faeb73354201b6f"},
		{"", "d41d8cd98f00b204e9800998ecf8427e"},
	}
	for _, tt := range tests {
		if got := BodyMD5([]byte(tt.body)); got != tt.want {
			t.Errorf("BodyMD5(%q) = %s, want %s", tt.body, got, tt.want)
		}
	}
}

func TestRequestSignatureVector(t *testing.T) {
	// §2.2 worked example.
	params := map[string][]string{
		"auth_key":       {vecKey},
		"auth_timestamp": {"1353088179"},
		"auth_version":   {"1.0"},
		"body_md5":       {"ec365a775a4cd0599faeb73354201b6f"},
	}
	const (
		wantString = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
		wantSig    = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
	)
	if got := RequestStringToSign("POST", "/apps/3/events", params); got != wantString {
		t.Errorf("RequestStringToSign =\n%q\nwant\n%q", got, wantString)
	}
	if got := SignRequest(vecSecret, "POST", "/apps/3/events", params); got != wantSig {
		t.Errorf("SignRequest = %s, want %s", got, wantSig)
	}

	// The signature itself travels in the query and must not change it.
	withSig := map[string][]string{"auth_signature": {wantSig}}
	for k, v := range params {
		withSig[k] = v
	}
	tests := []struct {
		name   string
		secret string
		method string
		path   string
		params map[string][]string
		sig    string
		want   bool
	}{
		{"valid", vecSecret, "POST", "/apps/3/events", params, wantSig, true},
		{"valid with auth_signature param", vecSecret, "POST", "/apps/3/events", withSig, wantSig, true},
		{"lowercase method", vecSecret, "post", "/apps/3/events", params, wantSig, true},
		{"uppercase hex", vecSecret, "POST", "/apps/3/events", params, strings.ToUpper(wantSig), true},
		{"wrong secret", "x", "POST", "/apps/3/events", params, wantSig, false},
		{"wrong method", vecSecret, "GET", "/apps/3/events", params, wantSig, false},
		{"wrong path", vecSecret, "POST", "/apps/4/events", params, wantSig, false},
		{"tampered param", vecSecret, "POST", "/apps/3/events", map[string][]string{
			"auth_key": {vecKey}, "auth_timestamp": {"1353088180"}, "auth_version": {"1.0"}, "body_md5": {"ec365a775a4cd0599faeb73354201b6f"},
		}, wantSig, false},
		{"non-hex signature", vecSecret, "POST", "/apps/3/events", params, "not-hex", false},
		{"empty signature", vecSecret, "POST", "/apps/3/events", params, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := VerifyRequestSignature(tt.secret, tt.method, tt.path, tt.params, tt.sig); got != tt.want {
				t.Errorf("VerifyRequestSignature = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRequestStringToSign(t *testing.T) {
	tests := []struct {
		name   string
		method string
		path   string
		params map[string][]string
		want   string
	}{
		{"no params", "GET", "/apps/1/channels", nil, "GET\n/apps/1/channels\n"},
		{"method uppercased", "get", "/p", map[string][]string{"a": {"1"}}, "GET\n/p\na=1"},
		{"mixed-case method", "pOsT", "/p", map[string][]string{"a": {"1"}}, "POST\n/p\na=1"},
		{"sorted by key", "GET", "/p", map[string][]string{"c": {"3"}, "a": {"1"}, "b": {"2"}}, "GET\n/p\na=1&b=2&c=3"},
		{"keys lowercased then sorted", "GET", "/p", map[string][]string{"B": {"2"}, "a": {"1"}, "C": {"3"}}, "GET\n/p\na=1&b=2&c=3"},
		{"values keep their case", "GET", "/p", map[string][]string{"Filter_By_Prefix": {"Presence-"}}, "GET\n/p\nfilter_by_prefix=Presence-"},
		{"auth_signature excluded", "GET", "/p", map[string][]string{"auth_signature": {"abc"}, "a": {"1"}}, "GET\n/p\na=1"},
		{"AUTH_SIGNATURE excluded", "GET", "/p", map[string][]string{"AUTH_SIGNATURE": {"abc"}, "a": {"1"}}, "GET\n/p\na=1"},
		{"multi-values joined with commas", "GET", "/p", map[string][]string{"info": {"user_count", "subscription_count"}}, "GET\n/p\ninfo=user_count,subscription_count"},
		{"empty value", "GET", "/p", map[string][]string{"a": {""}, "b": {"x"}}, "GET\n/p\na=&b=x"},
		{"no value at all", "GET", "/p", map[string][]string{"a": nil}, "GET\n/p\na="},
		{"not URL-escaped", "GET", "/p", map[string][]string{"q": {"a b&c=d/é"}}, "GET\n/p\nq=a b&c=d/é"},
		{"underscore sorts after letters", "GET", "/p", map[string][]string{"auth_key": {"k"}, "auth": {"x"}, "authz": {"y"}}, "GET\n/p\nauth=x&auth_key=k&authz=y"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RequestStringToSign(tt.method, tt.path, tt.params); got != tt.want {
				t.Errorf("RequestStringToSign(%q, %q, %v) =\n%q\nwant\n%q", tt.method, tt.path, tt.params, got, tt.want)
			}
		})
	}
}

// Regression (fixed): when two parameter names differ only in case (e.g.
// "auth_key" and "AUTH_KEY"), RequestStringToSign keeps whichever value the
// random map iteration order visits last, so the string to sign, and thus
// whether VerifyRequestSignature accepts the request, changes from call to
// call. A signature function must be deterministic.
func TestRequestStringToSignCaseCollisionIsDeterministic(t *testing.T) {
	params := map[string][]string{"foo": {"1"}, "FOO": {"2"}}
	first := RequestStringToSign("GET", "/p", params)
	for i := 0; i < 200; i++ {
		if got := RequestStringToSign("GET", "/p", params); got != first {
			t.Fatalf("RequestStringToSign is not deterministic for keys differing only in case: got %q and %q for the same input", first, got)
		}
	}
}
