SELECT r.`Id`, r.`SystemName` FROM `CustomerRole` r WHERE r.`SystemName` IN ('Registered', 'Guests')
