package nopdb

import (
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/state"
)

func TestDataHash(t *testing.T) {
	a := DataHash([]byte(`{"id":1,"name":"A <b>","price":"1.0000","x":[1,2]}`))
	b := DataHash([]byte("{ \"id\": 1,\n \"name\": \"A <b>\", \"price\": \"1.0000\", \"x\": [1, 2] }"))
	if a != b {
		t.Errorf("same data with other white space: %s vs %s", a, b)
	}
	if c := DataHash([]byte(`{"id":1,"name":"A <b>","price":"1.0001","x":[1,2]}`)); c == a {
		t.Error("different data, same hash")
	}
	if !strings.HasPrefix(a, "sha256:") || len(a) != 7+64 {
		t.Errorf("hash %q", a)
	}
	id := EventID(state.Order, 1001, a)
	if id != "nopdb-order-1001-"+a[7:31] || len(id) > 128 {
		t.Errorf("event id %q", id)
	}
}

func TestParseDecimal(t *testing.T) {
	for in, want := range map[string]string{"19.9900": "19.9900", "19.990000": "19.9900", "0": "0.0000", "-1.5": "-1.5000", "12.": "12.0000"} {
		m, err := parseDecimal(in)
		if err != nil || m.StringFixed(4) != want {
			t.Errorf("%q: %s, %v", in, m.StringFixed(4), err)
		}
	}
	if _, err := parseDecimal("1.23456"); err == nil {
		t.Error("5 significant fraction digits accepted")
	}
}

func TestScanBool(t *testing.T) {
	for _, c := range []struct {
		in   any
		want bool
	}{{true, true}, {int64(0), false}, {int64(1), true}, {[]byte{1}, true}, {[]byte{0}, false}, {[]byte("1"), true}, {"false", false}} {
		var b nbool
		if err := b.Scan(c.in); err != nil || b.V != c.want || !b.Valid {
			t.Errorf("%v: %+v %v", c.in, b, err)
		}
	}
	var b nbool
	if err := b.Scan(3.5); err == nil {
		t.Error("a float read as a boolean")
	}
}

func TestPictureURL(t *testing.T) {
	r := &Reader{storeURL: "https://shop.example"}
	for _, c := range []struct {
		id        int64
		mime, seo string
		want      string
	}{
		{7, "image/jpeg", "nikon", "https://shop.example/images/thumbs/0000007_nikon.jpeg"},
		{12345678, "image/x-png", "", "https://shop.example/images/thumbs/12345678.png"},
		{3, "image/pjpeg", "a", "https://shop.example/images/thumbs/0000003_a.jpg"},
		{4, "image/x-icon", "fav", "https://shop.example/images/thumbs/0000004_fav.ico"},
	} {
		if got := r.pictureURL(c.id, c.mime, c.seo); got != c.want {
			t.Errorf("%d %s %s: %s", c.id, c.mime, c.seo, got)
		}
	}
}
