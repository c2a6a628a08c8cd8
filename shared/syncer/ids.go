package syncer

import (
	"strconv"

	"github.com/google/uuid"
)

// idNamespace is the UUIDv5 namespace of every row id the app derives. Changing it would
// make the app create a second copy of every row, so it is fixed forever.
var idNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://github.com/nopsync/nopsync/dataverse-ids"))

// deterministicID returns the primary key the app gives the Dataverse row of one store
// object: a name-based UUID (v5) over "<storeID>/<kind>/<key>". Retries, replays, a wiped
// state table and two instances working at once therefore all land on the same row.
// kind names the Dataverse row ("contact", "account", "product", "productpricelevel",
// "salesorder", ...); key is the store's identity of the object (its id, or for shared
// rows a name). Rows that belong to no store (price list, unit group) use storeID 0.
func deterministicID(storeID int, kind, key string) string {
	return uuid.NewSHA1(idNamespace, []byte(strconv.Itoa(storeID)+"/"+kind+"/"+key)).String()
}

// madeByTheApp reports whether a row id is one deterministicID makes: a name-based
// (version 5, RFC 4122) UUID. Dataverse gives the rows it creates other ids (an admin's
// typed-in product, for one), but for about one in 64 by chance; such a row is then not
// adopted, and the store product writes NOP-<id> beside it instead.
func madeByTheApp(id string) bool {
	u, err := uuid.Parse(id)
	return err == nil && u.Version() == 5 && u.Variant() == uuid.RFC4122
}
