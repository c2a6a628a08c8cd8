package dataverse

import (
	"fmt"
	"unicode/utf8"
)

// ContactEmailLength is the length of a contact's emailaddress1 (Microsoft Learn, contact
// table reference: EMailAddress1, MaxLength 100).
const ContactEmailLength = 100

// CheckContactEmail returns an error naming field when email is longer than a contact's
// emailaddress1 holds: cut, it would be an address that does not exist, so the store
// reader and the mapping refuse such a value alike.
func CheckContactEmail(field, email string) error {
	if n := utf8.RuneCountInString(email); n > ContactEmailLength {
		return fmt.Errorf("%s is %d characters, over the %d a Dataverse contact's email (emailaddress1) holds", field, n, ContactEmailLength)
	}
	return nil
}
