package client

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// The error codes of tokencache's error table.
const (
	CodeInvalidArgument       = "invalid_argument"
	CodeUnauthenticated       = "unauthenticated"
	CodePermissionDenied      = "permission_denied"
	CodeUpstreamRejected      = "upstream_rejected"
	CodeUpstreamMisconfigured = "upstream_misconfigured"
	CodeUpstreamError         = "upstream_error"
	CodeUpstreamUnavailable   = "upstream_unavailable"
	CodeUpstreamTimeout       = "upstream_timeout"
)

// Error is an error answer of tokencache; use errors.As to get it.
type Error struct {
	Status          int           `json:"-"`       // the HTTP status; 0 in a bulk item
	Code            string        `json:"code"`    // one of the Code constants
	Message         string        `json:"message"` // for people
	Field           string        `json:"field,omitempty"`
	UpstreamCode    int           `json:"upstreamCode,omitempty"` // Polyv's code, with upstream_rejected
	UpstreamMessage string        `json:"upstreamMessage,omitempty"`
	RetryAfter      time.Duration `json:"-"` // from Retry-After, with 503
}

func (e *Error) Error() string {
	s := fmt.Sprintf("tokencache: %s: %s", e.Code, e.Message)
	if e.Field != "" {
		s += " (" + e.Field + ")"
	}
	return s
}

// Temporary reports whether the same call may succeed later.
func (e *Error) Temporary() bool {
	switch e.Code {
	case CodeUpstreamUnavailable, CodeUpstreamTimeout, CodeUpstreamError:
		return true
	}
	return false
}

func decodeError(resp *http.Response, body []byte) error {
	var env struct {
		Error *Error `json:"error"`
	}
	e := &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: http.StatusText(resp.StatusCode)}
	if json.Unmarshal(body, &env) == nil && env.Error != nil {
		e = env.Error
		e.Status = resp.StatusCode
	}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	return e
}
