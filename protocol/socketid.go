package protocol

import "strconv"

// AppendSocketID appends the textual socket id "a.b" that pusher-http-php
// (and so Laravel's toOthers()) insists on: two decimal numbers joined by a
// dot.
func AppendSocketID(dst []byte, a, b uint64) []byte {
	dst = strconv.AppendUint(dst, a, 10)
	dst = append(dst, '.')
	return strconv.AppendUint(dst, b, 10)
}

// ValidSocketID reports whether s has the form \d+\.\d+, each number
// at most 20 digits (the length of the largest uint64).
func ValidSocketID(s string) bool {
	if len(s) > 41 {
		return false
	}
	dot := -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			if dot >= 0 {
				return false
			}
			dot = i
			continue
		}
		if c < '0' || c > '9' {
			return false
		}
	}
	return dot > 0 && dot < len(s)-1 && dot <= 20 && len(s)-dot-1 <= 20
}
