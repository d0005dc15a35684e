package polyv

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"testing"
)

const (
	vecAppID  = "g4rqgmmjuo"
	vecSecret = "fsq2k5weced1h8vui657xtdva66whf0g"
	vecTS     = "1660270926732"
)

func vecParams(kv ...string) map[string]string {
	p := map[string]string{"appId": vecAppID, "timestamp": vecTS}
	for i := 0; i < len(kv); i += 2 {
		p[kv[i]] = kv[i+1]
	}
	return p
}

func TestSignVectors(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]string
		want   string
	}{
		{"docs example", vecParams("channelIds", "2477096,2272655", "startDay", "2022-05-20", "endDay", "2022-06-18"), "0D2BDA2FD04D93A2B8832B91FD973C4D"},
		{"chat token", vecParams("channelId", "2094979", "userId", "1b448be323", "role", "viewer", "origin", "web"), "2F5C622E4CE344CB4575AE4F9EA9015C"},
		{"origin omitted", vecParams("channelId", "2094979", "userId", "1b448be323", "role", "viewer"), "0C171E0F3668B76184F2BD594D88E6DB"},
		{"origin empty", vecParams("channelId", "2094979", "userId", "1b448be323", "role", "viewer", "origin", ""), "0C171E0F3668B76184F2BD594D88E6DB"},
		{"origin spaces", vecParams("channelId", "2094979", "userId", "1b448be323", "role", "viewer", "origin", "  "), "0C171E0F3668B76184F2BD594D88E6DB"},
		{"sign param ignored", vecParams("channelId", "2094979", "userId", "1b448be323", "role", "viewer", "sign", "XYZ"), "0C171E0F3668B76184F2BD594D88E6DB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Sign(tt.params, vecSecret); got != tt.want {
				t.Errorf("Sign() = %q, want %q", got, tt.want)
			}
		})
	}
}

// hashOf computes the expected sign from the documented plain string, so the
// derived cases check the concatenation rule, not this package against itself.
func hashOf(plain string, sha bool) string {
	if sha {
		s := sha256.Sum256([]byte(plain))
		return strings.ToUpper(hex.EncodeToString(s[:]))
	}
	s := md5.Sum([]byte(plain))
	return strings.ToUpper(hex.EncodeToString(s[:]))
}

func TestSignDerived(t *testing.T) {
	s := vecSecret
	tests := []struct {
		name   string
		params map[string]string
		plain  string // the documented string that is hashed
		sha    bool
	}{
		{"documented chat-token string", vecParams("channelId", "2094979", "userId", "1b448be323", "role", "viewer", "origin", "web"),
			s + "appIdg4rqgmmjuochannelId2094979originwebroleviewertimestamp1660270926732userId1b448be323" + s, false},
		{"non-ASCII userId hashed as UTF-8", vecParams("channelId", "2094979", "userId", "观众-李", "role", "viewer"),
			s + "appIdg4rqgmmjuochannelId2094979roleviewertimestamp1660270926732userId观众-李" + s, false},
		{"raw & = and spaces, not URL-encoded", vecParams("channelId", "2094979", "userId", "a&b=c d", "role", "guest"),
			s + "appIdg4rqgmmjuochannelId2094979roleguesttimestamp1660270926732userIda&b=c d" + s, false},
		{"ASCII order puts uppercase first", vecParams("Zeta", "1", "alpha", "2"),
			s + "Zeta1alpha2appIdg4rqgmmjuotimestamp1660270926732" + s, false},
		{"SHA256 signs signatureMethod too", vecParams("channelId", "2094979", "userId", "1b448be323", "role", "viewer", "signatureMethod", "SHA256"),
			s + "appIdg4rqgmmjuochannelId2094979roleviewersignatureMethodSHA256timestamp1660270926732userId1b448be323" + s, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := hashOf(tt.plain, tt.sha)
			if got := Sign(tt.params, s); got != want {
				t.Errorf("Sign() = %q, want %q", got, want)
			}
			if tt.sha && len(want) != 64 {
				t.Errorf("SHA256 sign has %d hex digits, want 64", len(want))
			}
		})
	}
}

func TestSignedFormHoldsExactlySignedParams(t *testing.T) {
	for _, method := range []SignMethod{SignMD5, SignSHA256} {
		t.Run(string(method), func(t *testing.T) {
			form := SignedForm(vecParams("channelId", "2094979", "userId", "u 1&x=y", "role", "viewer", "origin", " "), vecSecret, method)
			var keys []string
			plain := map[string]string{}
			for k, v := range form {
				keys = append(keys, k)
				if len(v) != 1 {
					t.Fatalf("param %s sent %d times", k, len(v))
				}
				plain[k] = v[0]
			}
			sort.Strings(keys)
			want := []string{"appId", "channelId", "role", "sign", "timestamp", "userId"}
			if method == SignSHA256 {
				want = []string{"appId", "channelId", "role", "sign", "signatureMethod", "timestamp", "userId"}
			}
			if strings.Join(keys, ",") != strings.Join(want, ",") {
				t.Errorf("form keys = %v, want %v", keys, want)
			}
			if got := Sign(plain, vecSecret); got != plain["sign"] {
				t.Errorf("sign of the sent params = %q, sent sign %q", got, plain["sign"])
			}
			// The wire form decodes back to the raw values.
			if plain["userId"] != "u 1&x=y" {
				t.Errorf("userId = %q after encoding", plain["userId"])
			}
		})
	}
}
