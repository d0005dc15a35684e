package httpapi

import (
	"reflect"
	"slices"
	"testing"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/client"
	"github.com/tokencache/tokencache/polyv"
)

// fieldNames lists a struct's exported field names.
func fieldNames(v any) []string {
	var names []string
	t := reflect.TypeOf(v)
	for i := range t.NumField() {
		if f := t.Field(i); f.IsExported() {
			names = append(names, f.Name)
		}
	}
	return names
}

// A token's fields are one set wherever they are restated: what Polyv
// gives (polyv), what is cached (cache), what is served (httpapi) and what
// the Go client reads (client, which keeps no dependency). The served body
// adds the request (channel, user, role, origin) and the expiry.
func TestTokenFieldsAgree(t *testing.T) {
	fromPolyv := fieldNames(polyv.ChatToken{})
	cached := slices.DeleteFunc(fieldNames(cache.Token{}), func(n string) bool { return n == "Rendered" })
	served := fieldNames(chatTokenBody{})
	read := fieldNames(client.ChatToken{})
	if !slices.Equal(fromPolyv, cached) {
		t.Errorf("polyv.ChatToken %v and cache.Token %v differ", fromPolyv, cached)
	}
	for _, n := range fromPolyv {
		if !slices.Contains(served, n) {
			t.Errorf("the served body lacks %s", n)
		}
	}
	if !slices.Equal(served, read) {
		t.Errorf("the served body %v and client.ChatToken %v differ", served, read)
	}
	for i, n := range served {
		st, _ := reflect.TypeOf(chatTokenBody{}).FieldByName(n)
		ct, _ := reflect.TypeOf(client.ChatToken{}).FieldByName(read[i])
		if st.Tag.Get("json") != ct.Tag.Get("json") || st.Type != ct.Type {
			t.Errorf("%s: served as %q %v, read as %q %v", n, st.Tag.Get("json"), st.Type, ct.Tag.Get("json"), ct.Type)
		}
	}
}
