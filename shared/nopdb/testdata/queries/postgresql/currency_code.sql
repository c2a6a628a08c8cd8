SELECT cu."CurrencyCode" FROM "Currency" cu WHERE cu."Id" = $1
