package protocol

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"sort"
	"strings"
	"testing"
)

// hmacHex is the reference signature, computed here without Sign.
func hmacHex(secret, message string) []byte {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(message))
	return mac.Sum(nil)
}

// FuzzVerifyAuth checks a subscription or sign-in token "key:signature"
// against a reference: the part before the first colon must be the key, the
// rest the hex HMAC (either case, since hex decoding accepts both).
func FuzzVerifyAuth(f *testing.F) {
	f.Add(vecKey, vecSecret, vecKey+":58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4", "1234.1234:private-foobar")
	f.Add("key", "secret", "key:", "")
	f.Fuzz(func(t *testing.T, appKey, secret, auth, message string) {
		key, sig, ok := strings.Cut(auth, ":")
		got, err := hex.DecodeString(sig)
		want := ok && key == appKey && err == nil && bytes.Equal(got, hmacHex(secret, message))
		if VerifyAuth(appKey, secret, auth, message) != want {
			t.Fatalf("VerifyAuth(%q, %q, %q, %q) = %v", appKey, secret, auth, message, !want)
		}
		// The token an auth endpoint makes passes, in either case of hex,
		// unless the key itself holds a colon (as in Reverb, such a key
		// can never authenticate: the token is split at the first colon).
		good := appKey + ":" + Sign(secret, message)
		if ok := VerifyAuth(appKey, secret, good, message); ok == strings.Contains(appKey, ":") {
			t.Fatalf("VerifyAuth refused (or, key with a colon, accepted) its own token %q: %v", good, ok)
		}
		if !strings.Contains(appKey, ":") && !VerifyAuth(appKey, secret, appKey+":"+strings.ToUpper(Sign(secret, message)), message) {
			t.Fatalf("upper-case hex token refused")
		}
	})
}

// refStringToSign is Pusher's rule for the signed string, written out
// independently of RequestStringToSign: keys lowercased and sorted (keys
// equal once lowercased keep the order of their original spelling), all
// but auth_signature, k=v joined by '&', values of one key joined by ','.
func refStringToSign(method, path string, params map[string][]string) string {
	type kv struct{ lower, orig string }
	var keys []kv
	for k := range params {
		if lk := strings.ToLower(k); lk != "auth_signature" {
			keys = append(keys, kv{lk, k})
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].lower != keys[j].lower {
			return keys[i].lower < keys[j].lower
		}
		return keys[i].orig < keys[j].orig
	})
	var groups []string
	for i := 0; i < len(keys); {
		var vals []string
		j := i
		for ; j < len(keys) && keys[j].lower == keys[i].lower; j++ {
			vals = append(vals, params[keys[j].orig]...)
		}
		groups = append(groups, keys[i].lower+"="+strings.Join(vals, ","))
		i = j
	}
	return strings.ToUpper(method) + "\n" + path + "\n" + strings.Join(groups, "&")
}

// FuzzRequestSignature checks the HTTP API's signed string against the
// reference, that a request's own signature verifies and nothing else
// does, and BodyMD5. internal/httpapi fuzzes the whole request path.
func FuzzRequestSignature(f *testing.F) {
	f.Add(vecSecret, "POST", "/apps/3/events",
		"auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
		[]byte(`{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}`))
	f.Fuzz(func(t *testing.T, secret, method, path, rawQuery string, body []byte) {
		params, _ := url.ParseQuery(rawQuery)
		s := RequestStringToSign(method, path, params)
		if ref := refStringToSign(method, path, params); s != ref {
			t.Fatalf("string to sign for %q:\n%q\nwant\n%q", rawQuery, s, ref)
		}
		sig := params.Get("auth_signature")
		decoded, err := hex.DecodeString(sig)
		want := err == nil && bytes.Equal(decoded, hmacHex(secret, s))
		if VerifyRequestSignature(secret, method, path, params, sig) != want {
			t.Fatalf("VerifyRequestSignature(%q) = %v", rawQuery, !want)
		}
		own := SignRequest(secret, method, path, params)
		if !VerifyRequestSignature(secret, method, path, params, own) {
			t.Fatalf("a request's own signature %s does not verify", own)
		}
		// auth_signature is not signed: replacing it changes nothing.
		with := url.Values{}
		for k, v := range params {
			with[k] = v
		}
		with.Set("auth_signature", own)
		if SignRequest(secret, method, path, with) != own {
			t.Fatalf("auth_signature changed the signature")
		}
		sum := md5.Sum(body)
		if got := BodyMD5(body); got != hex.EncodeToString(sum[:]) {
			t.Fatalf("BodyMD5 = %s", got)
		}
	})
}
