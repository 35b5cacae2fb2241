package protocol

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
)

// Sign returns hex(HMAC-SHA256(secret, message)), the digest every Pusher
// signature uses.
func Sign(secret, message string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(message))
	return hex.EncodeToString(mac.Sum(nil))
}

// validHexSignature compares a hex signature in constant time.
func validHexSignature(secret, message, signature string) bool {
	got, err := hex.DecodeString(signature)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(message))
	return hmac.Equal(got, mac.Sum(nil))
}

// ChannelAuthMessage is the string a channel subscription's auth signs:
// "socket_id:channel" for private channels, with ":channel_data" appended
// for presence channels.
func ChannelAuthMessage(socketID, channel, channelData string, withChannelData bool) string {
	if withChannelData {
		return socketID + ":" + channel + ":" + channelData
	}
	return socketID + ":" + channel
}

// UserAuthMessage is the string pusher:signin's auth signs.
func UserAuthMessage(socketID, userData string) string {
	return socketID + "::user::" + userData
}

// VerifyAuth checks an auth token of the form "key:signature" against the
// app's key and secret. Reverb checks only the part after the colon;
// Pusher's token names the app, so Resound checks the key as well.
func VerifyAuth(appKey, secret, auth, message string) bool {
	key, sig, ok := strings.Cut(auth, ":")
	if !ok || !hmac.Equal([]byte(key), []byte(appKey)) {
		return false
	}
	return validHexSignature(secret, message, sig)
}

// BodyMD5 is the hex MD5 of a request body, the body_md5 parameter.
func BodyMD5(body []byte) string {
	sum := md5.Sum(body)
	return hex.EncodeToString(sum[:])
}

// RequestStringToSign builds the string an HTTP API request signs:
// METHOD\npath\nquery, where the query is every parameter but
// auth_signature, keys lowercased and sorted, joined as k=v&k=v without URL
// escaping, several values of one key joined by commas.
func RequestStringToSign(method, path string, params map[string][]string) string {
	// Sort the original keys so that keys differing only in case (which no
	// Pusher library sends) still give one fixed string: their values are
	// joined in the order of the original keys.
	orig := make([]string, 0, len(params))
	for k := range params {
		if strings.ToLower(k) != "auth_signature" {
			orig = append(orig, k)
		}
	}
	sort.Slice(orig, func(i, j int) bool {
		li, lj := strings.ToLower(orig[i]), strings.ToLower(orig[j])
		if li != lj {
			return li < lj
		}
		return orig[i] < orig[j]
	})
	var b strings.Builder
	b.WriteString(strings.ToUpper(method))
	b.WriteByte('\n')
	b.WriteString(path)
	b.WriteByte('\n')
	prev := ""
	for i, k := range orig {
		lk := strings.ToLower(k)
		switch {
		case i == 0:
		case lk == prev:
			b.WriteByte(',')
		default:
			b.WriteByte('&')
		}
		if i == 0 || lk != prev {
			b.WriteString(lk)
			b.WriteByte('=')
		}
		b.WriteString(strings.Join(params[k], ","))
		prev = lk
	}
	return b.String()
}

// SignRequest returns the auth_signature for a request.
func SignRequest(secret, method, path string, params map[string][]string) string {
	return Sign(secret, RequestStringToSign(method, path, params))
}

// VerifyRequestSignature checks auth_signature in constant time.
func VerifyRequestSignature(secret, method, path string, params map[string][]string, signature string) bool {
	return validHexSignature(secret, RequestStringToSign(method, path, params), signature)
}
