package polyv

import (
	"errors"
	"testing"
)

func TestDecodeReply(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   Kind
		token  string
	}{
		{"success", 200, `{"code":200,"status":"success","message":"","data":{"token":"abc","mediaChannelKey":"k","roomId":2094979,"childRoomEnabled":"N"}}`, KindNone, "abc"},
		{"error on HTTP 200", 200, `{"code":403,"status":"error","message":"invalid signature.","data":""}`, KindMisconfigured, ""},
		{"code decides, not HTTP status", 500, `{"code":200,"status":"success","message":"","data":{"token":"t"}}`, KindNone, "t"},
		{"param error with numeric data", 400, `{"code":400,"status":"error","message":"param validate error","data":400}`, KindRejected, ""},
		{"illegal channel", 200, `{"code":403,"status":"error","message":"illegal channel id: 1","data":""}`, KindRejected, ""},
		{"timestamp", 200, `{"code":400,"status":"error","message":"invalid timestamp.","data":""}`, KindMisconfigured, ""},
		{"app not found", 200, `{"code":400,"status":"error","message":"application not found.","data":""}`, KindMisconfigured, ""},
		{"appId required", 200, `{"code":400,"status":"error","message":"appId is required.","data":""}`, KindMisconfigured, ""},
		{"server fail", 200, `{"code":500,"status":"error","message":"fail","data":""}`, KindServer, ""},
		{"qps", 200, `{"code":400,"status":"error","message":"qps exceeds number of calls","data":""}`, KindRateLimited, ""},
		{"qps as 500", 200, `{"code":500,"status":"error","message":"qps exceeds number of calls","data":""}`, KindRateLimited, ""},
		{"html gateway page", 502, `<html><body>Bad Gateway</body></html>`, KindMalformed, ""},
		{"empty body", 200, ``, KindMalformed, ""},
		{"no code", 200, `{"status":"success","data":{"token":"t"}}`, KindMalformed, ""},
		{"success without token", 200, `{"code":200,"status":"success","message":"","data":{}}`, KindMalformed, ""},
		{"success with empty data", 200, `{"code":200,"status":"success","message":"","data":""}`, KindMalformed, ""},
		{"code 200 but error status", 200, `{"code":200,"status":"error","message":"?","data":""}`, KindMalformed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := decodeReply(EndpointChatToken, tt.status, []byte(tt.body))
			if got := Classify(err); got != tt.want {
				t.Fatalf("Classify(%v) = %v, want %v", err, got, tt.want)
			}
			if data.Token != tt.token {
				t.Errorf("Token = %q, want %q", data.Token, tt.token)
			}
		})
	}
}

func TestTransient(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&APIError{Code: 500, Message: "fail"}, true},
		{&APIError{Code: 400, Message: "qps exceeds number of calls"}, false},
		{&APIError{Code: 403, Message: "invalid signature."}, false},
		{&APIError{Code: 403, Message: "illegal channel id: 1"}, false},
		{&MalformedError{HTTPStatus: 502}, true},
		{&MalformedError{HTTPStatus: 200}, false},
		{errors.New("other"), false},
	}
	for _, tt := range tests {
		if got := Transient(tt.err); got != tt.want {
			t.Errorf("Transient(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func FuzzDecodeReply(f *testing.F) {
	f.Add(200, []byte(`{"code":200,"status":"success","message":"","data":{"token":"abc","roomId":"1"}}`))
	f.Add(200, []byte(`{"code":403,"status":"error","message":"invalid signature.","data":""}`))
	f.Add(502, []byte(`<html>bad gateway</html>`))
	f.Add(200, []byte(`{"code":200,"status":"success","data":{"roomId":1e400}}`))
	f.Add(200, []byte(`{"code":null}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		data, err := decodeReply(EndpointChatToken, status, body)
		if err == nil {
			if data.Token == "" {
				t.Fatal("no error and no token")
			}
			return
		}
		if data.Token != "" {
			t.Fatal("an error came with a token")
		}
		var apiErr *APIError
		var malformed *MalformedError
		if !errors.As(err, &apiErr) && !errors.As(err, &malformed) {
			t.Fatalf("error %T is not typed", err)
		}
		if k := Classify(err); k == KindNone || k == KindUnknown {
			t.Fatalf("Classify(%v) = %v", err, k)
		}
	})
}
