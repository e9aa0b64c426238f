//! The display page's languages and built-in labels (pure: no I/O).
//!
//! Every text the board shows is a label: a kebab-case key (the names `[display.labels]` accepts)
//! with a built-in text per [`Language`]. Some labels take values, written `{name}`; an override
//! may use the same placeholders as the built-in text, in any order, or none. The page gets the
//! resolved set (built-ins with the overrides applied) as one JSON object, so it never needs to
//! know which language it speaks beyond the locale for numbers, dates and times.

use std::collections::BTreeMap;

/// The board's language (`[display] language`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Language {
    /// English (the default), shown with 24-hour times (locale `en-GB`): a store screen is read
    /// at a glance, and "14:05" needs no "PM".
    #[default]
    En,
    /// German.
    De,
    /// French.
    Fr,
    /// Spanish.
    Es,
    /// Italian.
    It,
    /// Dutch.
    Nl,
    /// Swedish.
    Sv,
    /// Finnish.
    Fi,
}

impl Language {
    /// Every language, in the order of the columns of the label table.
    pub const ALL: [Language; 8] = [
        Language::En,
        Language::De,
        Language::Fr,
        Language::Es,
        Language::It,
        Language::Nl,
        Language::Sv,
        Language::Fi,
    ];

    /// The language with this config code (`en`, `de`, …).
    pub fn from_code(code: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.code() == code)
    }

    /// The config code, also the page's `<html lang>`.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::De => "de",
            Language::Fr => "fr",
            Language::Es => "es",
            Language::It => "it",
            Language::Nl => "nl",
            Language::Sv => "sv",
            Language::Fi => "fi",
        }
    }

    /// The BCP 47 locale the page formats numbers, dates and times with (`Intl`).
    pub fn locale(self) -> &'static str {
        match self {
            Language::En => "en-GB",
            Language::De => "de-DE",
            Language::Fr => "fr-FR",
            Language::Es => "es-ES",
            Language::It => "it-IT",
            Language::Nl => "nl-NL",
            Language::Sv => "sv-SE",
            Language::Fi => "fi-FI",
        }
    }

    fn column(self) -> usize {
        Language::ALL.iter().position(|l| *l == self).unwrap_or(0)
    }

    /// The title above the smileys when `[display] title` is not set.
    pub fn default_title(self) -> &'static str {
        TITLES[self.column()]
    }
}

/// The codes of every language, for error messages and docs: `en, de, …`.
pub fn language_codes() -> String {
    Language::ALL.map(Language::code).join(", ")
}

const TITLES: [&str; 8] = [
    "How was your visit today?",
    "Wie war Ihr Besuch heute?",
    "Comment s’est passée votre visite aujourd’hui ?",
    "¿Qué tal su visita de hoy?",
    "Com’è andata la sua visita oggi?",
    "Hoe was uw bezoek vandaag?",
    "Hur var ditt besök i dag?",
    "Millainen käyntisi oli tänään?",
];

/// Every label: key, then the text in each language of [`Language::ALL`]. Long compound words
/// carry a soft hyphen (U+00AD) where the page may break them on a narrow screen.
#[rustfmt::skip]
pub const LABELS: &[(&str, [&str; 8])] = &[
    ("very-unhappy", ["Very unhappy", "Sehr unzufrieden", "Très mécontent", "Muy insatisfecho", "Molto insoddisfatto", "Zeer ontevreden", "Mycket missnöjd", "Erittäin tyytymätön"]),
    ("unhappy", ["Unhappy", "Unzufrieden", "Mécontent", "Insatisfecho", "Insoddisfatto", "Ontevreden", "Missnöjd", "Tyytymätön"]),
    ("happy", ["Happy", "Zufrieden", "Satisfait", "Satisfecho", "Soddisfatto", "Tevreden", "Nöjd", "Tyytyväinen"]),
    ("very-happy", ["Very happy", "Sehr zufrieden", "Très satisfait", "Muy satisfecho", "Molto soddisfatto", "Zeer tevreden", "Mycket nöjd", "Erittäin tyytyväinen"]),
    ("site", ["All terminals", "Alle Terminals", "Tous les terminaux", "Todos los terminales", "Tutti i terminali", "Alle terminals", "Alla terminaler", "Kaikki päätteet"]),
    ("terminal", ["Terminal {id}", "Terminal {id}", "Terminal {id}", "Terminal {id}", "Terminale {id}", "Terminal {id}", "Terminal {id}", "Pääte {id}"]),
    ("terminals", ["Terminals", "Terminals", "Terminaux", "Terminales", "Terminali", "Terminals", "Terminaler", "Päätteet"]),
    ("unknown-terminal", ["Unknown terminal: {id}", "Unbekanntes Terminal: {id}", "Terminal inconnu : {id}", "Terminal desconocido: {id}", "Terminale sconosciuto: {id}", "Onbekende terminal: {id}", "Okänd terminal: {id}", "Tuntematon pääte: {id}"]),
    ("today", ["Today", "Heute", "Aujourd’hui", "Hoy", "Oggi", "Vandaag", "I dag", "Tänään"]),
    ("last-60m", ["Last 60 min", "Letzte 60 Min.", "60 dernières min", "Últimos 60 min", "Ultimi 60 min", "Laatste 60 min", "Senaste 60 min", "Viimeiset 60 min"]),
    ("last-15m", ["Last 15 min", "Letzte 15 Min.", "15 dernières min", "Últimos 15 min", "Ultimi 15 min", "Laatste 15 min", "Senaste 15 min", "Viimeiset 15 min"]),
    ("happy-index", ["Happy index", "Zufriedenheits\u{ad}index", "Indice de satisfaction", "Índice de satisfacción", "Indice di soddisfazione", "Tevredenheids\u{ad}index", "Nöjdhets\u{ad}index", "Tyytyväisyys\u{ad}indeksi"]),
    ("positive", ["Positive", "Positiv", "Positifs", "Positivos", "Positivi", "Positief", "Positiva", "Positiivisia"]),
    ("votes", ["Votes", "Stimmen", "Votes", "Votos", "Voti", "Stemmen", "Röster", "Ääniä"]),
    ("hours-today", ["Today", "Heute", "Aujourd’hui", "Hoy", "Oggi", "Vandaag", "I dag", "Tänään"]),
    ("hours-last-week", ["Same day last week", "Gleicher Tag letzte Woche", "Même jour la semaine dernière", "Mismo día la semana pasada", "Stesso giorno settimana scorsa", "Zelfde dag vorige week", "Samma dag förra veckan", "Sama päivä viime viikolla"]),
    ("chart-top", ["Top line: {n} per hour", "Obere Linie: {n} pro Stunde", "Ligne du haut : {n} par heure", "Línea superior: {n} por hora", "Linea superiore: {n} all’ora", "Bovenste lijn: {n} per uur", "Översta linjen: {n} per timme", "Ylin viiva: {n} tunnissa"]),
    ("no-votes", ["No votes yet", "Noch keine Stimmen", "Pas encore de votes", "Aún no hay votos", "Ancora nessun voto", "Nog geen stemmen", "Inga röster än", "Ei vielä ääniä"]),
    ("outside-hours", ["{n} presses outside opening hours", "{n} Tastendrücke außerhalb der Öffnungszeiten", "{n} appuis hors des heures d’ouverture", "{n} pulsaciones fuera del horario de apertura", "{n} pressioni fuori dall’orario di apertura", "{n} drukken buiten openingstijden", "{n} tryck utanför öppettiderna", "{n} painallusta aukioloaikojen ulkopuolella"]),
    ("filtered", ["{n} filtered", "{n} gefiltert", "{n} filtrés", "{n} filtradas", "{n} filtrate", "{n} gefilterd", "{n} filtrerade", "{n} suodatettu"]),
    ("more", ["+{n} more", "+{n} weitere", "+{n} autres", "+{n} más", "+{n} altri", "+{n} meer", "+{n} till", "+{n} lisää"]),
    ("live", ["Live", "Live", "En direct", "En directo", "In diretta", "Live", "Live", "Ajan tasalla"]),
    ("connecting", ["Connecting…", "Verbinde…", "Connexion…", "Conectando…", "Connessione…", "Verbinden…", "Ansluter…", "Yhdistetään…"]),
    ("stale-since", ["Stale: no data since {time}", "Veraltet: keine Daten seit {time}", "Pas à jour : aucune donnée depuis {time}", "Sin actualizar: sin datos desde las {time}", "Non aggiornato: nessun dato dalle {time}", "Verouderd: geen gegevens sinds {time}", "Inaktuell: inga data sedan {time}", "Vanhentunut: ei tietoja klo {time} jälkeen"]),
    ("stale-last", ["Stale: last data at {time}", "Veraltet: letzte Daten um {time}", "Pas à jour : dernières données à {time}", "Sin actualizar: últimos datos a las {time}", "Non aggiornato: ultimi dati alle {time}", "Verouderd: laatste gegevens om {time}", "Inaktuell: senaste data {time}", "Vanhentunut: viimeisimmät tiedot klo {time}"]),
    ("last-data", ["Last data {time}", "Letzte Daten {time}", "Dernières données {time}", "Últimos datos {time}", "Ultimi dati {time}", "Laatste gegevens {time}", "Senaste data {time}", "Viimeisimmät tiedot {time}"]),
    ("no-data", ["No data yet", "Noch keine Daten", "Pas encore de données", "Aún no hay datos", "Ancora nessun dato", "Nog geen gegevens", "Inga data än", "Ei vielä tietoja"]),
    ("pending", ["Votes waiting for upload: {n}", "Stimmen warten auf Upload: {n}", "Votes en attente d’envoi : {n}", "Votos pendientes de envío: {n}", "Voti in attesa di invio: {n}", "Stemmen wachtend op upload: {n}", "Röster som väntar på uppladdning: {n}", "Lähetystä odottavia ääniä: {n}"]),
    ("upload-off", ["Upload: not configured", "Upload: nicht eingerichtet", "Envoi : non configuré", "Envío: no configurado", "Invio: non configurato", "Upload: niet ingesteld", "Uppladdning: inte konfigurerad", "Lähetys: ei määritetty"]),
    ("upload-last", ["Last upload {ago}", "Letzter Upload {ago}", "Dernier envoi {ago}", "Último envío {ago}", "Ultimo invio {ago}", "Laatste upload {ago}", "Senaste uppladdning {ago}", "Viimeisin lähetys {ago}"]),
    ("upload-none", ["Upload: none yet ({state})", "Upload: noch keiner ({state})", "Envoi : aucun pour l’instant ({state})", "Envío: ninguno aún ({state})", "Invio: nessuno finora ({state})", "Upload: nog geen ({state})", "Uppladdning: ingen än ({state})", "Lähetys: ei vielä ({state})"]),
    ("clock-ok", ["Clock synchronised", "Uhr synchronisiert", "Horloge synchronisée", "Reloj sincronizado", "Orologio sincronizzato", "Klok gesynchroniseerd", "Klockan synkroniserad", "Kello synkronoitu"]),
    ("clock-bad", ["Clock NOT synchronised", "Uhr NICHT synchronisiert", "Horloge NON synchronisée", "Reloj NO sincronizado", "Orologio NON sincronizzato", "Klok NIET gesynchroniseerd", "Klockan INTE synkroniserad", "Kello EI synkronoitu"]),
    ("seconds-ago", ["{n} s ago", "vor {n} s", "il y a {n} s", "hace {n} s", "{n} s fa", "{n} s geleden", "för {n} s sedan", "{n} s sitten"]),
    ("minutes-ago", ["{n} min ago", "vor {n} Min.", "il y a {n} min", "hace {n} min", "{n} min fa", "{n} min geleden", "för {n} min sedan", "{n} min sitten"]),
    ("hours-ago", ["{n} h ago", "vor {n} Std.", "il y a {n} h", "hace {n} h", "{n} h fa", "{n} u geleden", "för {n} h sedan", "{n} h sitten"]),
    ("minutes", ["{n} min", "{n} Min.", "{n} min", "{n} min", "{n} min", "{n} min", "{n} min", "{n} min"]),
    ("alert-negative-share", ["{scope}: {value} negative in the last {window}", "{scope}: {value} negativ in den letzten {window}", "{scope} : {value} de négatifs sur les dernières {window}", "{scope}: {value} negativos en los últimos {window}", "{scope}: {value} negativi negli ultimi {window}", "{scope}: {value} negatief in de laatste {window}", "{scope}: {value} negativa de senaste {window}", "{scope}: {value} negatiivisia viimeisten {window} aikana"]),
    ("alert-index-below", ["{scope}: happy index {value}, below {threshold}, in the last {window}", "{scope}: Zufriedenheitsindex {value}, unter {threshold}, in den letzten {window}", "{scope} : indice {value}, sous {threshold}, sur les dernières {window}", "{scope}: índice {value}, por debajo de {threshold}, en los últimos {window}", "{scope}: indice {value}, sotto {threshold}, negli ultimi {window}", "{scope}: index {value}, onder {threshold}, in de laatste {window}", "{scope}: index {value}, under {threshold}, de senaste {window}", "{scope}: indeksi {value}, alle {threshold}, viimeisten {window} aikana"]),
    ("alert-index-above", ["{scope}: happy index {value}, above {threshold}, in the last {window}", "{scope}: Zufriedenheitsindex {value}, über {threshold}, in den letzten {window}", "{scope} : indice {value}, au-dessus de {threshold}, sur les dernières {window}", "{scope}: índice {value}, por encima de {threshold}, en los últimos {window}", "{scope}: indice {value}, sopra {threshold}, negli ultimi {window}", "{scope}: index {value}, boven {threshold}, in de laatste {window}", "{scope}: index {value}, över {threshold}, de senaste {window}", "{scope}: indeksi {value}, yli {threshold}, viimeisten {window} aikana"]),
    ("alert-button-count", ["{scope}: {value} × “{button}” in the last {window}", "{scope}: {value} × „{button}“ in den letzten {window}", "{scope} : {value} × « {button} » sur les dernières {window}", "{scope}: {value} × «{button}» en los últimos {window}", "{scope}: {value} × «{button}» negli ultimi {window}", "{scope}: {value} × ‘{button}’ in de laatste {window}", "{scope}: {value} × ”{button}” de senaste {window}", "{scope}: {value} × ”{button}” viimeisten {window} aikana"]),
];

/// Why a label override was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// No label has this key.
    #[error("{key:?} is not a label; the labels are: {}", label_keys().join(", "))]
    UnknownKey {
        /// The key as written.
        key: String,
    },
    /// The text uses a placeholder the label does not provide.
    #[error("{placeholder:?} is not a value of label {key:?}; it can use: {}", if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") })]
    UnknownPlaceholder {
        /// The label.
        key: String,
        /// The unknown placeholder, with its braces.
        placeholder: String,
        /// The placeholders the built-in text uses.
        allowed: Vec<String>,
    },
}

/// Every label key, in table order.
pub fn label_keys() -> Vec<&'static str> {
    LABELS.iter().map(|(key, _)| *key).collect()
}

/// The `{name}` placeholders in a text, in order, with their braces.
fn placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        match rest[open..].find('}') {
            Some(close) => {
                found.push(rest[open..open + close + 1].to_string());
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    found
}

/// Checks one override: its key exists and it uses only that label's placeholders.
pub fn check_override(key: &str, text: &str) -> Result<&'static str, LabelError> {
    let Some((known, texts)) = LABELS.iter().find(|(k, _)| *k == key) else {
        return Err(LabelError::UnknownKey { key: key.into() });
    };
    let allowed = placeholders(texts[0]);
    if let Some(bad) = placeholders(text)
        .into_iter()
        .find(|p| !allowed.contains(p))
    {
        return Err(LabelError::UnknownPlaceholder {
            key: key.into(),
            placeholder: bad,
            allowed,
        });
    }
    Ok(known)
}

/// The built-in labels of `language` with `overrides` (already checked) applied.
pub fn resolve(
    language: Language,
    overrides: &BTreeMap<&'static str, String>,
) -> BTreeMap<&'static str, String> {
    LABELS
        .iter()
        .map(|(key, texts)| {
            let text = overrides
                .get(key)
                .cloned()
                .unwrap_or_else(|| texts[language.column()].to_string());
            (*key, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_translation_uses_the_placeholders_of_the_english_text() {
        for (key, texts) in LABELS {
            let mut english = placeholders(texts[0]);
            english.sort();
            for (language, text) in Language::ALL.iter().zip(texts) {
                assert!(!text.trim().is_empty(), "{key} in {language:?} is empty");
                let mut these = placeholders(text);
                these.sort();
                assert_eq!(these, english, "{key} in {language:?}: {text:?}");
            }
        }
    }

    #[test]
    fn keys_are_unique_and_kebab_case() {
        let keys = label_keys();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "a key twice");
        for key in keys {
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{key}"
            );
        }
    }

    #[test]
    fn overrides_replace_built_ins_and_are_checked() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            check_override("votes", "Stimmen gesamt").expect("known"),
            "Stimmen gesamt".to_string(),
        );
        let labels = resolve(Language::De, &overrides);
        assert_eq!(labels["votes"], "Stimmen gesamt");
        assert_eq!(labels["happy"], "Zufrieden");
        assert_eq!(labels.len(), LABELS.len());
        assert_eq!(
            check_override("vots", "x"),
            Err(LabelError::UnknownKey { key: "vots".into() })
        );
        assert!(check_override("more", "and {n} others").is_ok());
        assert!(check_override("more", "more").is_ok());
        let err = check_override("more", "+{count}").expect_err("unknown placeholder");
        assert_eq!(
            err.to_string(),
            "\"{count}\" is not a value of label \"more\"; it can use: {n}"
        );
    }

    #[test]
    fn languages_round_trip_their_codes() {
        for language in Language::ALL {
            assert_eq!(Language::from_code(language.code()), Some(language));
            assert!(!language.default_title().is_empty());
        }
        assert_eq!(Language::from_code("pt"), None);
        assert_eq!(language_codes(), "en, de, fr, es, it, nl, sv, fi");
    }
}
