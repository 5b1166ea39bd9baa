from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sites', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='site',
            name='key_generation',
            field=models.PositiveIntegerField(db_default=1, default=1, editable=False),
        ),
    ]
