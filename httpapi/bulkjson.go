package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/labstack/echo/v4"
)

// decodeBulk reads {"requests":[{"userId","role","origin"}, ...]} strictly:
// field names match exactly, once each, so that "Role" beside "role" (which
// encoding/json would fold together) is an error naming the field.
func decodeBulk(r io.Reader) ([]bulkItem, error) {
	dec := json.NewDecoder(r)
	var items []bulkItem
	seen := false
	err := strictObject(dec, "body", func(name string) error {
		if name != "requests" {
			return errUnknownField
		}
		seen = true
		return strictArray(dec, "requests", func(i int) error {
			var it bulkItem
			where := fmt.Sprintf("requests[%d]", i)
			err := strictObject(dec, where, func(name string) error {
				dst := map[string]*string{"userId": &it.UserID, "role": &it.Role, "origin": &it.Origin}[name]
				if dst == nil {
					return errUnknownField
				}
				return dec.Decode(dst)
			})
			items = append(items, it)
			return err
		})
	})
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, echo.ErrStatusRequestEntityTooLarge
	case errors.As(err, new(*apiError)):
		return nil, err
	case err != nil:
		return nil, invalid("body", `body must be JSON: {"requests":[{"userId","role","origin"}]}`)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalid("body", "body must hold one JSON object")
	}
	if !seen || len(items) == 0 || len(items) > maxBulk {
		return nil, invalid("requests", "requests must hold 1 to 1000 items")
	}
	return items, nil
}

var errUnknownField = errors.New("unknown field")

// strictObject reads one JSON object, calling field for each name, which
// must read the value. A name seen twice is an error.
func strictObject(dec *json.Decoder, where string, field func(name string) error) error {
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	names := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		name, _ := tok.(string)
		if names[name] {
			return invalid(where, fmt.Sprintf("%s: field %q given twice", where, name))
		}
		names[name] = true
		if err := field(name); err != nil {
			var ae *apiError
			var tooLarge *http.MaxBytesError
			var typ *json.UnmarshalTypeError
			switch {
			case errors.As(err, &ae), errors.As(err, &tooLarge):
				return err
			case errors.As(err, &typ):
				return invalid(where, fmt.Sprintf("%s.%s must be a string", where, name))
			case errors.Is(err, errUnknownField):
				return invalid(where, fmt.Sprintf("%s: unknown field %q (fields are case-sensitive)", where, name))
			}
			return err
		}
	}
	return expectDelim(dec, '}')
}

// strictArray reads one JSON array, calling elem for each element.
func strictArray(dec *json.Decoder, where string, elem func(i int) error) error {
	if err := expectDelim(dec, '['); err != nil {
		return err
	}
	for i := 0; dec.More(); i++ {
		if i == maxBulk {
			return invalid(where, "requests must hold 1 to 1000 items")
		}
		if err := elem(i); err != nil {
			return err
		}
	}
	return expectDelim(dec, ']')
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %q", want)
	}
	return nil
}
